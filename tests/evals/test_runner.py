"""The eval runner and report: sweeps, records, resuming after a kill, refusing a
different configuration, reports from partial results, and the CLI end to end."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from loopagent.cli import app
from loopagent.errors import ConfigError
from loopagent.evals.grid import format_length, parse_length, parse_loops_list
from loopagent.evals.report import bootstrap_interval, pareto_front, wilson_interval, write_report
from loopagent.evals.runner import run_eval
from loopagent.evals.store import MANIFEST, RESULTS, Record, ResultDirConflict, ResultsCorrupt, load_records
from loopagent.trajectory import read_trajectory

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

# Loaded by path: under --import-mode=importlib this folder is not on sys.path.
_NAME = "_loopagent_eval_fixtures"
if _NAME not in sys.modules:
    _spec = importlib.util.spec_from_file_location(_NAME, HERE / "_fixtures.py")
    assert _spec is not None and _spec.loader is not None
    sys.modules[_NAME] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules[_NAME])
fx = sys.modules[_NAME]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def lines_of(out: Path) -> list[str]:
    return (out / RESULTS).read_text().splitlines()


def assert_valid_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert data[12:16] == b"IHDR" and len(data) > 1000, path
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 100 and height > 100


# -- small pieces ---------------------------------------------------------------------------------
def test_parse_length():
    assert parse_length("32k") == 32_000
    assert parse_length("1m") == parse_length("1M") == 1_000_000
    assert parse_length("10M") == 10_000_000
    assert parse_length("8000") == 8000
    assert parse_length("1.5m") == 1_500_000
    assert parse_length(" 2K ") == 2000
    assert parse_length(4096) == 4096
    for bad in ("", "k", "12q", "-3k", "0", "1,000"):
        with pytest.raises(ConfigError):
            parse_length(bad)
    assert format_length(32_000) == "32k" and format_length(1_500_000) == "1.5m" and format_length(777) == "777"
    assert parse_loops_list("1, 2,8", "x") == [1, 2, 8]
    assert parse_loops_list(None, "x") == [None] == parse_loops_list("default", "x")
    with pytest.raises(ConfigError):
        parse_loops_list("1,two", "x")


def test_intervals_and_pareto():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    lo, hi = bootstrap_interval([0.0, 0.25, 0.5, 0.75, 1.0] * 4)
    assert lo < 0.5 < hi and 0.0 <= lo and hi <= 1.0
    assert bootstrap_interval([0.3, 0.3]) == (0.3, 0.3)
    points = [(0.0, 0.1, "a"), (10.0, 0.5, "b"), (20.0, 0.4, "c"), (30.0, 0.9, "d"), (30.0, 0.8, "e")]
    assert pareto_front(points) == ["a", "b", "d"]


# -- sweeps --------------------------------------------------------------------------------------
def test_sweep_writes_valid_records_and_trajectories(tmp_path: Path):
    out = tmp_path / "out"
    root, child = fx.root_model(), fx.child_model()
    summary = run_eval(fx.NeedleTask(), **fx.sweep_kwargs(out, root=root, child=child, lengths=["2k", "4k"], n=3,
                                                         baselines=["root_only", "no_loops"]))
    configs = ["rlm.cl=1.d=1", "rlm.cl=2.d=1", "root_only", "no_loops.cl=1.d=1"]
    assert summary.jobs_total == summary.jobs_run == 4 * 2 * 3 and summary.jobs_skipped == 0 and summary.errors == 0
    assert list(summary.accuracy) == configs
    # The child answers its loop budget; the root is right only with >= 2 child loops.
    assert summary.accuracy == {"rlm.cl=1.d=1": 0.0, "rlm.cl=2.d=1": 1.0, "root_only": 0.0, "no_loops.cl=1.d=1": 0.0}
    assert summary.mean_model_time_s >= 0 and summary.mean_wall_s > 0 and summary.mean_setup_s > 0

    lines = lines_of(out)
    records = [Record.model_validate_json(line) for line in lines]  # every line validates
    assert len({r.job for r in records}) == len(records) == 24
    assert {(r.config, r.length) for r in records} == {(c, L) for c in configs for L in (2000, 4000)}
    for r in records:
        assert r.error is None and r.finished and r.reason == "final" and r.task == "needle-test"
        assert r.trajectory is not None
        events = read_trajectory(out / r.trajectory)
        assert events[-1].type == "run_end" and events[-1].answer == r.prediction
        assert r.wall_s >= r.model_time_s >= 0
        if r.kind == "root_only":
            assert r.usage.calls == 1 and r.iterations == 1 and r.depth is None
        else:
            assert r.usage.calls == 2 and r.usage.loop_tokens > 0 and r.child_loops in (1, 2)
            assert r.usage_by_depth[1].calls == 1
    assert len(root.calls) == 24 and len(child.calls) == 18  # one call each per run; root_only has no child
    assert {c["loops"] for c in child.calls} == {1, 2}
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["config"]["lengths"] == [2000, 4000] and manifest["config"]["n"] == 3
    assert manifest["config"]["child"] == "scripted-child" and manifest["configs"] == configs
    assert not (out / "trajectories" / ".partial").exists()
    assert json.loads((out / "summary.json").read_text())["jobs_run"] == 24

    # Same configuration again: everything is done, nothing runs.
    root2, child2 = fx.root_model(), fx.child_model()
    again = run_eval(fx.NeedleTask(), **fx.sweep_kwargs(out, root=root2, child=child2, lengths=["2k", "4k"], n=3,
                                                       baselines=["root_only", "no_loops"]))
    assert again.jobs_run == 0 and again.jobs_skipped == 24 and not root2.calls and not child2.calls
    assert lines_of(out) == lines


def test_looped_root_sweep_and_loop_checks(tmp_path: Path):
    root = fx.root_model()
    looped_root = type(root)(lambda m, loops: fx.ROOT_CODE, name="looped-root", looped=True, default_loops=3,
                             max_loops=4)
    summary = run_eval(fx.NeedleTask(), **fx.sweep_kwargs(tmp_path / "a", root=looped_root, root_loops=[None, 1], n=2,
                                                         depths=[1, 2]))
    assert set(summary.accuracy) == {f"rlm.rl={rl}.cl={cl}.d={d}" for rl in (3, 1) for cl in (1, 2) for d in (1, 2)}
    assert {c["loops"] for c in looped_root.calls} == {1, 3}  # None resolved to the model's default
    with pytest.raises(ConfigError, match="exceeds the maximum"):
        run_eval(fx.NeedleTask(), **fx.sweep_kwargs(tmp_path / "b", root=looped_root, root_loops=[8]))
    # A model that is not looped takes no loop list, and no_loops needs a looped model.
    with pytest.raises(ConfigError, match="not a looped model"):
        run_eval(fx.NeedleTask(), **fx.sweep_kwargs(tmp_path / "c", root_loops=[1, 2]))
    with pytest.raises(ConfigError, match="no_loops"):
        run_eval(fx.NeedleTask(), **fx.sweep_kwargs(tmp_path / "d", child=fx.root_model(), child_loops=[None],
                                                   baselines=["no_loops"]))
    with pytest.raises(ConfigError, match="unknown baseline"):
        run_eval(fx.NeedleTask(), **fx.sweep_kwargs(tmp_path / "e", baselines=["oracle"]))
    with pytest.raises(ConfigError, match="bad rlm_options"):
        run_eval(fx.NeedleTask(), **fx.sweep_kwargs(tmp_path / "f", rlm_options={"max_iteration": 3}))
    for name in "bcdef":
        assert not (tmp_path / name / MANIFEST).exists()  # refused before touching the directory


def test_different_configuration_is_refused(tmp_path: Path):
    out = tmp_path / "out"
    run_eval(fx.NeedleTask(), **fx.sweep_kwargs(out, n=2))
    before = lines_of(out)
    for change in ({"child_loops": [1, 4]}, {"n": 3}, {"seed": 1}, {"lengths": ["3k"]}, {"depths": [2]},
                   {"baselines": ["root_only"]}, {"rlm_options": {"max_iterations": 3}},
                   {"root": fx.root_model(name="other")}):
        with pytest.raises(ResultDirConflict, match="different configuration"):
            run_eval(fx.NeedleTask(), **fx.sweep_kwargs(out, n=2) | change)
    with pytest.raises(ResultDirConflict):
        run_eval(fx.HalfTask(), **fx.sweep_kwargs(out, n=2))
    with pytest.raises(ResultDirConflict, match="--extend"):  # a superset: the error says how to extend
        run_eval(fx.NeedleTask(), **fx.sweep_kwargs(out, n=2, lengths=["2k", "3k"]))
    with pytest.raises(ResultDirConflict, match="cannot extend"):
        run_eval(fx.NeedleTask(), **fx.sweep_kwargs(out, n=3, extend=True))
    with pytest.raises(ResultDirConflict, match="cannot extend"):
        run_eval(fx.NeedleTask(), **fx.sweep_kwargs(out, n=2, child_loops=[2, 4], extend=True))
    assert lines_of(out) == before
    # Options equal to the defaults, or a different bound on concurrent calls, are the same sweep.
    same = run_eval(fx.NeedleTask(), **fx.sweep_kwargs(out, n=2, concurrency=1,
                                                      rlm_options={"max_iterations": 20, "concurrency": 3}))
    assert same.jobs_run == 0 and same.jobs_skipped == 4

    # Extending the grid runs only the new points and keeps every old record.
    root = fx.root_model()
    summary = run_eval(fx.NeedleTask(), **fx.sweep_kwargs(out, root=root, n=2, child_loops=[1, 2, 4],
                                                         lengths=["2k", "3k"], extend=True))
    assert summary.jobs_total == 3 * 2 * 2 and summary.jobs_skipped == 4 and summary.jobs_run == 8 == len(root.calls)
    assert lines_of(out)[:4] == before
    assert json.loads((out / MANIFEST).read_text())["config"]["child_loops"] == [1, 2, 4]


@pytest.mark.slow
def test_killed_run_resumes_without_rerunning_or_losing(tmp_path: Path):
    out = tmp_path / "out"
    script = tmp_path / "sweep.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(HERE)!r})
        import _fixtures as fx
        from loopagent.evals.runner import run_eval
        run_eval(fx.NeedleTask(), **fx.sweep_kwargs({str(out)!r}, root=fx.root_model(latency_s=0.25),
                 child=fx.child_model(latency_s=0.25), n=8, concurrency=2))
    """))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (out / RESULTS).exists() and len(lines_of(out)) >= 3:
                break
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            time.sleep(0.05)
        else:
            pytest.fail("the sweep wrote no records in time")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    done_before = lines_of(out)
    assert 3 <= len(done_before) < 16, "the kill came too late to test resuming"
    before_ids = {Record.model_validate_json(line).job for line in done_before}

    # The report works on what the killed run left.
    report = write_report(out).read_text()
    assert f"partial: {len(done_before)} of 16 runs" in report
    assert_valid_png(out / "plots" / "accuracy_vs_child_loops.png")

    root, child = fx.root_model(), fx.child_model()
    summary = run_eval(fx.NeedleTask(), **fx.sweep_kwargs(out, root=root, child=child, n=8, concurrency=2))
    assert summary.jobs_skipped == len(done_before) and summary.jobs_run == 16 - len(done_before)
    assert len(root.calls) == 16 - len(done_before)  # done items never run again
    after = lines_of(out)
    assert after[: len(done_before)] == done_before  # nothing lost or rewritten
    jobs = [Record.model_validate_json(line).job for line in after]
    assert len(jobs) == len(set(jobs)) == 16
    assert before_ids.isdisjoint({Record.model_validate_json(line).job for line in after[len(done_before):]})
    assert not (out / "trajectories" / ".partial").exists()  # a killed run's partial logs are cleaned up
    assert len(list((out / "trajectories").rglob("*.jsonl"))) == 16
    assert "complete" in write_report(out).read_text()


def test_torn_last_line_is_ignored_and_its_item_rerun(tmp_path: Path):
    out = tmp_path / "out"
    run_eval(fx.NeedleTask(), **fx.sweep_kwargs(out, n=3))
    lines = lines_of(out)
    torn = lines[-1][: len(lines[-1]) // 2]
    (out / RESULTS).write_text("\n".join(lines[:-1]) + "\n" + torn)  # killed mid-write: no newline
    assert len(load_records(out)) == len(lines) - 1
    root = fx.root_model()
    summary = run_eval(fx.NeedleTask(), **fx.sweep_kwargs(out, root=root, n=3))
    assert summary.jobs_run == 1 == len(root.calls)
    after = lines_of(out)
    assert after[:-1] == lines[:-1] and len(after) == len(lines)
    assert Record.model_validate_json(after[-1]).job == Record.model_validate_json(lines[-1]).job

    # Any other bad line is an error naming it, not something to skip silently.
    (out / RESULTS).write_text(after[0] + "\n{not json\n" + "\n".join(after[1:]) + "\n")
    with pytest.raises(ResultsCorrupt, match=":2:"):
        run_eval(fx.NeedleTask(), **fx.sweep_kwargs(out, n=3))


def test_crashed_runs_are_recorded_and_can_be_retried(tmp_path: Path):
    out = tmp_path / "out"

    def flaky(messages: Any, loops: Any) -> str:
        raise RuntimeError("the backend fell over")

    crashing = type(fx.root_model())(flaky, name="scripted-root")
    summary = run_eval(fx.NeedleTask(), **fx.sweep_kwargs(out, root=crashing, n=2))
    assert summary.errors == summary.jobs_run == 4
    records = load_records(out)
    assert all(r.error and "fell over" in r.error and r.score == 0.0 and not r.finished for r in records)
    assert all(r.trajectory and (out / r.trajectory).exists() for r in records)  # the crash's log is kept
    report = write_report(out).read_text()
    assert "## Crashed runs" in report and "fell over" in report

    root = fx.root_model()
    assert run_eval(fx.NeedleTask(), **fx.sweep_kwargs(out, root=root, n=2)).jobs_run == 0  # kept by default
    summary = run_eval(fx.NeedleTask(), **fx.sweep_kwargs(out, root=root, n=2, retry_errors=True))
    assert summary.jobs_run == 4 == len(root.calls) and summary.errors == 0
    assert summary.accuracy == {"rlm.cl=1.d=1": 0.0, "rlm.cl=2.d=1": 1.0}  # the retries supersede the crashes


# -- reports -------------------------------------------------------------------------------------
def test_report_tables_and_plots(tmp_path: Path):
    out = tmp_path / "out"
    run_eval(fx.NeedleTask(), **fx.sweep_kwargs(out, lengths=["2k", "4k"], n=3, baselines=["root_only", "no_loops"]))
    text = write_report(out).read_text()
    for heading in ("## Accuracy by configuration", "## Accuracy by length", "## Pareto front: accuracy vs loop-tokens",
                    "## Time per run", "## Plots"):
        assert heading in text
    assert "Wilson" in text
    row = next(line for line in text.splitlines() if line.startswith("| `rlm.cl=2.d=1` | rlm"))
    assert "| 6 | 1.000 | [0.610, 1.000] |" in row
    assert "| config | 2k | 4k |" in text
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert pngs == ["accuracy_vs_child_loops.png", "accuracy_vs_length.png", "pareto_loop_tokens.png"]
    for name in pngs:
        assert_valid_png(out / "plots" / name)
        assert f"(plots/{name})" in text

    # Partial results (first lines only) and fractional scores (bootstrap intervals).
    part = tmp_path / "part"
    run_eval(fx.HalfTask(), **fx.sweep_kwargs(part, n=4))
    lines = lines_of(part)
    (part / RESULTS).write_text("\n".join(lines[:3]) + "\n")
    text = write_report(part).read_text()
    assert "partial: 3 of 8 runs" in text and "bootstrap" in text
    assert_valid_png(part / "plots" / "accuracy_vs_length.png")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError):
        write_report(empty)


def test_runner_overhead_is_small(tmp_path: Path):
    """The runner's own time per item (scheduling, scoring, logs, records: not the sandbox
    or the controller) against model time, with models that sleep 20 ms per call."""

    def root_reply(messages: Any, loops: Any) -> str:
        turn = sum(1 for m in messages if m["role"] == "assistant")
        return "```repl\nprint(llm_query('hi'))\n```" if turn < 2 else fx.ROOT_CODE

    root = type(fx.root_model())(root_reply, name="root", latency_s=0.02)
    child = fx.child_model(latency_s=0.02)
    summary = run_eval(fx.NeedleTask(), **fx.sweep_kwargs(tmp_path / "out", root=root, child=child, child_loops=[2],
                                                         lengths=["8k"], n=10, concurrency=1))
    assert summary.accuracy == {"rlm.cl=2.d=1": 1.0}
    assert summary.mean_model_time_s >= 5 * 0.02  # 3 root turns + 2 child calls
    print(f"\nper item: wall {summary.mean_wall_s * 1e3:.1f} ms, model {summary.mean_model_time_s * 1e3:.1f} ms, "
          f"sandbox {summary.mean_setup_s * 1e3:.1f} ms, controller {summary.mean_controller_s * 1e3:.1f} ms, "
          f"runner {summary.mean_runner_s * 1e3:.2f} ms ({summary.runner_ratio:.2%} of model time)")
    assert summary.runner_ratio is not None and summary.runner_ratio < 0.05


# -- CLI -------------------------------------------------------------------------------------------
def flat(result: Any) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def _write_scripted(tmp_path: Path, root_reply: str, count: int) -> tuple[Path, Path]:
    root = tmp_path / "root.json"
    child = tmp_path / "child.json"
    root.write_text(json.dumps({"replies": [root_reply] * count}))
    child.write_text(json.dumps({"replies": ["2"] * count, "looped": True, "max_loops": 8}))
    return root, child


@pytest.mark.slow
def test_cli_eval_and_report_end_to_end(tmp_path: Path):
    """The installed CLI in a subprocess, on the test task (registered by a two-line shim
    that then runs the same typer app as the `loopagent` command)."""
    root, child = _write_scripted(tmp_path, fx.ROOT_CODE, 100)
    out = tmp_path / "out"
    shim = tmp_path / "loopagent_cli.py"
    shim.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(HERE)!r})
        import _fixtures
        from loopagent.evals.base import register
        register(_fixtures.NeedleTask)
        from loopagent.cli import app
        app()
    """))
    args = [sys.executable, str(shim), "eval", "needle-test", "--root", f"scripted:{root}",
            "--child", f"scripted:{child}",
            "--child-loops", "1,2", "--depth", "1,2", "--lengths", "2k,3k", "--n", "2", "--out", str(out),
            "--baseline", "no_loops", "--concurrency", "3", "--task-option", "hops=2"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rlm.cl=2.d=2" in proc.stdout and "report:" in proc.stdout
    records = load_records(out)
    assert len(records) == len({r.job for r in records}) == 6 * 2 * 2  # (2 x 2 + 2 no_loops) x 2 lengths x n=2
    assert all(r.score == 1.0 for r in records)  # the scripted child always says "2"
    assert json.loads((out / MANIFEST).read_text())["config"]["task_options"] == {"hops": 2}
    assert (out / "report.md").exists()

    # Resuming does nothing; a different grid is refused with exit status 2.
    proc = subprocess.run(args, capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert proc.returncode == 0 and "0 runs now, 24 already done" in proc.stdout, proc.stdout + proc.stderr
    proc = subprocess.run([a if a != "1,2" else "1,4" for a in args], capture_output=True, text=True, timeout=90,
                          cwd=tmp_path)
    assert proc.returncode == 2 and "different configuration" in proc.stdout

    (out / "report.md").unlink()
    proc = subprocess.run([sys.executable, str(shim), "report", str(out)], capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "## Accuracy by configuration" in (out / "report.md").read_text()
    assert_valid_png(out / "plots" / "accuracy_vs_child_loops.png")


def test_cli_eval_builtin_task(tmp_path: Path):
    """The `loopagent` command itself on a built-in task (plumbing only: the scripted root
    cannot know the answers)."""
    from loopagent.evals.base import task_names

    try:
        names = task_names()
    except ImportError:
        names = []
    if "sniah" not in names:
        pytest.skip("no built-in generated task (sniah) yet")
    root, child = _write_scripted(tmp_path, "```repl\nFINAL(str(len(context)))\n```", 20)
    exe = Path(sys.executable).with_name("loopagent")
    out = tmp_path / "out"
    proc = subprocess.run([str(exe), "eval", "sniah", "--root", f"scripted:{root}", "--child", f"scripted:{child}",
                           "--lengths", "8k", "--n", "2", "--out", str(out), "--baseline", "root_only"],
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = load_records(out)
    assert {r.config for r in records} == {"rlm.cl=1.d=1", "root_only"} and len(records) == 4
    assert all(0.0 <= r.score <= 1.0 and r.error is None for r in records)
    assert (out / "report.md").exists()


def test_cli_errors(tmp_path: Path):
    runner = CliRunner()
    root, _ = _write_scripted(tmp_path, fx.ROOT_CODE, 5)
    base = ["--root", f"scripted:{root}", "--lengths", "2k", "--n", "1", "--out", str(tmp_path / "out")]
    result = runner.invoke(app, ["eval", "no-such-task", *base])
    if isinstance(result.exception, ImportError):
        pytest.skip("the built-in tasks are not importable yet")
    assert result.exit_code == 2
    assert "unknown task 'no-such-task'" in flat(result) and "available:" in flat(result)
    from loopagent.evals.base import register

    register(fx.NeedleTask)
    result = runner.invoke(app, ["eval", "needle-test", *base, "--root-loops", "2,4"])
    assert result.exit_code == 2 and "not a looped model" in flat(result)
    result = runner.invoke(app, ["eval", "needle-test", *base, "--lengths", "12q"])
    assert result.exit_code == 2 and "bad length" in flat(result)
    result = runner.invoke(app, ["eval", "needle-test", *base, "--task-option", "nokey"])
    assert result.exit_code == 2 and "key=value" in flat(result)
    result = runner.invoke(app, ["report", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "not a directory" in flat(result)
    assert not (tmp_path / "out" / MANIFEST).exists()


def test_options_added_after_the_first_sweeps_are_left_out_at_their_defaults():
    """A sweep started before an RLM option existed must still resume: the runner drops each
    later option from the sweep's identity while it has its default, as RLM.config() reports it."""
    from loopagent import RLM
    from loopagent.backends.scripted import ScriptedBackend
    from loopagent.evals import runner

    config = RLM(ScriptedBackend(["x"])).config()
    for name, default in runner._LATER_DEFAULTS.items():
        assert config[name] == default, name
