"""Faults an attacker (or a broken model) tries against the controller, the logs and the CLI.

Each test reproduces one fault of the issue "The REPL ... holds under the faults an attacker
tries"; all of them are small (a few MB at most) and use scripted models.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import tracemalloc

import pytest
from typer.testing import CliRunner

from loopagent import RLM, ConfigError
from loopagent.backends.scripted import ScriptedBackend
from loopagent.cli import app
from loopagent.environments import UnsupportedContextError
from loopagent.errors import BackendError
from loopagent.parsing import find_final_in_text
from loopagent.rlm import _Run, _RunTree
from loopagent.trajectory import SCHEMA_VERSION, TrajectoryError, TrajectoryWriter, read_trajectory


def repl(code: str) -> str:
    return f"```repl\n{textwrap.dedent(code).strip()}\n```"


def out(run) -> str:
    """A CliRunner's output with the console's line wrapping undone."""
    return " ".join(run.output.split())


def events_of(result, kind=None):
    return [e for e in read_trajectory(result.trajectory) if kind is None or e.type == kind]


# -- 1. huge FINAL answers ------------------------------------------------------------------------------


def test_huge_final_answer_is_capped_marked_and_logged_once(tmp_path):
    size = 4_000_000
    RLM(ScriptedBackend([repl("FINAL('x')")])).run("q", context="c")  # load the tokenizer before measuring
    root = ScriptedBackend([repl(f"FINAL('x' * {size})")])
    rlm = RLM(root, max_answer_chars=10_000, log_dir=tmp_path)
    tracemalloc.start()
    try:
        result = rlm.run("q", context="c")
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.finished and result.reason == "final"
    assert result.answer.startswith("x" * 10_000) and len(result.answer) < 10_200
    assert "answer cut" in result.answer and "max_answer_chars" in result.answer
    assert "max_answer_chars" in result.detail
    # Nothing of the full answer outlives its arrival (the result holds the cut one) ...
    assert held < size / 10, held
    # ... and the controller adds no copy to the peak, which is the sandbox transport's
    # receive of the call (buffer, frame and decoded JSON: about 4x).
    assert peak < 5 * size, peak
    assert result.trajectory.stat().st_size < 100_000
    (final,) = events_of(result, "final")
    (end,) = events_of(result, "run_end")
    assert final.answer == result.answer  # the answer in full (as capped), once
    assert len(end.answer) <= 20_100  # the run end clips it like every other logged text


def test_final_var_and_text_answers_are_capped_too():
    root = ScriptedBackend([repl("big = 'y' * 5000\nFINAL_VAR('big')")])
    assert len(RLM(root, max_answer_chars=100).run("q", context="c").answer) < 300
    root = ScriptedBackend(["FINAL(" + "z" * 150 + ")"])
    answer = RLM(root, max_answer_chars=100).run("q", context="c").answer
    assert answer.startswith("z" * 100) and "answer cut" in answer
    with pytest.raises(ConfigError, match="max_answer_chars must be a positive integer"):
        RLM(root, max_answer_chars=0)


def test_logged_texts_are_clipped(tmp_path):
    big = "w" * 50_000
    root = ScriptedBackend([f"Looking.\n{repl('print(context)')}\n# {big}", repl("FINAL('ok')")])
    result = RLM(root, log_dir=tmp_path, log_text_limit=1000, sandbox={"max_output_chars": 100_000}).run(
        "q", context=big)
    assert result.answer == "ok"
    turn = events_of(result, "root_turn")[0]
    cell = events_of(result, "repl_exec")[0]
    assert len(turn.completion) < 1100 and "more characters not logged" in turn.completion
    assert len(cell.stdout) < 1100 and "more characters not logged" in cell.stdout
    assert result.trajectory.stat().st_size < 20_000


# -- 2. failed starts leave no log -------------------------------------------------------------------------


def test_failed_starts_leave_no_trajectory_file(tmp_path):
    root = ScriptedBackend([repl("FINAL(1)")])
    with pytest.raises(UnsupportedContextError):
        RLM(root, log_dir=tmp_path).run_direct("q", "q", context=object())
    with pytest.raises(UnsupportedContextError):
        RLM(root, log_dir=tmp_path).run("q", context=object())
    with pytest.raises(ConfigError):
        RLM(root, log_dir=tmp_path).run(" ", context="c")
    assert list(tmp_path.iterdir()) == []
    writer = TrajectoryWriter(tmp_path / "sub" / "never.jsonl")
    writer.close()
    assert not (tmp_path / "sub").exists()


# -- 3. backends raising anything inside llm_batch ----------------------------------------------------------------


def _flaky(messages, loops):
    prompt = messages[-1]["content"]
    if prompt.startswith("bad"):
        raise RuntimeError(f"driver crashed on {prompt}")
    return prompt.upper()


def test_failing_calls_in_a_batch_keep_the_good_replies(tmp_path):
    root = ScriptedBackend([
        repl("r = llm_batch(['good%d' % i if i % 8 else 'bad%d' % i for i in range(64)])\n"
             "print(sum(x.startswith('[error') for x in r), r[1], r[0])"),
        repl("llm_query('bad single')"),
        repl("FINAL('done')"),
    ])
    result = RLM(root, ScriptedBackend(_flaky, name="flaky"), log_dir=tmp_path).run("q", context="c")
    assert result.answer == "done"
    batch_output = root.calls[1]["messages"][-1]["content"]
    assert "8 GOOD1 [error:" in batch_output and "RuntimeError: driver crashed on bad0" in batch_output
    single = root.calls[2]["messages"][-1]["content"]
    assert "llm_query() failed" in single and "driver crashed on bad single" in single
    calls = events_of(result, "sub_call")
    assert len(calls) == 65 and sum(c.error is not None for c in calls) == 9
    assert all("RuntimeError" in c.error for c in calls if c.error)


def test_budget_stops_still_stop_the_run():
    root = ScriptedBackend([repl("r = llm_batch(['a', 'b', 'c'])")] * 5)
    slow = ScriptedBackend(lambda m, loops: "late", latency_s=2.0, name="slow")
    result = RLM(root, slow, budget={"timeout_s": 0.5}).run("q", context="c")
    assert result.reason == "timeout" and result.iterations == 1


def test_cancellation_is_not_turned_into_an_error_reply():
    def stop(messages, loops):
        raise asyncio.CancelledError()

    rlm = RLM(ScriptedBackend(["unused"]), ScriptedBackend(stop, name="stop"))
    run = _Run(_RunTree(rlm, TrajectoryWriter(None)), None, depth=0, root=rlm.root)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(run._children(["a", "b"], None, "llm_batch"))


# -- 4. FINAL written as text ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ('FINAL("forty two")', ("FINAL", "forty two")),
    ("FINAL('it\\'s')", ("FINAL", "it's")),
    ("FINAL(my best guess)", ("FINAL", "my best guess")),
    ("FINAL(42)", ("FINAL", "42")),
    ("FINAL([1, 2])", ("FINAL", "[1, 2]")),
    ('FINAL("C:\\dir")', ("FINAL", "C:\\dir")),
    ("Done.\nFINAL_VAR(answer)", ("FINAL_VAR", "answer")),
    ("FINAL(s f', ct +)l", ("unreadable", "FINAL(s f', ct +)l")),
    ("FINAL(s f', ct +)l\nprint(x)", ("unreadable", "FINAL(s f', ct +)l")),  # was taken as an answer
    ("FINAL(s f', ct +)", ("unreadable", "FINAL(s f', ct +)")),
    ("FINAL(len(x) + 1)", ("unreadable", "FINAL(len(x) + 1)")),
    ("FINAL(a = b)", ("unreadable", "FINAL(a = b)")),
    ("FINAL()", ("unreadable", "FINAL()")),
    ("FINAL_VAR(a.b)", ("unreadable", "FINAL_VAR(a.b)")),
    ("FINAL(Paris)\nIt is the capital (of France)", ("FINAL", "Paris")),
    ('FINAL("""two\nlines""")\nthanks (bye)', ("FINAL", "two\nlines")),
    ("FINAL(" + "[" * 10_000 + ")", ("unreadable", "FINAL(" + "[" * 10_000 + ")")),
    ("no final here", None),
])
def test_text_final_forms(text, expected):
    assert find_final_in_text(text) == expected


def test_unreadable_final_and_missing_final_var_get_specific_replies():
    root = ScriptedBackend(["FINAL(s f', ct +)", "FINAL_VAR(nope)", 'FINAL("fine")'])
    result = RLM(root).run("q", context="c")
    assert result.answer == "fine" and result.finished and result.iterations == 3
    unreadable = root.calls[1]["messages"][-1]["content"]
    assert "could not be read" in unreadable and 'FINAL("' in unreadable
    missing = root.calls[2]["messages"][-1]["content"]
    assert "variable 'nope' is not defined in the REPL; assign it first or use FINAL(answer)" in missing


# -- 5. loopagent show / read_trajectory on other files ------------------------------------------------------


def test_read_trajectory_rejects_files_that_are_not_logs(tmp_path):
    binary = tmp_path / "blob.jsonl"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00" * 10)
    with pytest.raises(TrajectoryError, match=r"not a trajectory log \(not UTF-8 text\)"):
        read_trajectory(binary)
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"name": "x", "value": 1}) + "\n")
    with pytest.raises(TrajectoryError, match=r"not a trajectory: line 1 is not a loopagent event \("):
        read_trajectory(other)
    newer = tmp_path / "newer.jsonl"
    newer.write_text(json.dumps({"v": SCHEMA_VERSION + 1, "type": "run_start", "run_id": "r", "new": 1}) + "\n")
    with pytest.raises(TrajectoryError, match=f"schema version {SCHEMA_VERSION + 1}.*up to {SCHEMA_VERSION}"):
        read_trajectory(newer)


def test_read_trajectory_still_skips_a_torn_last_line(tmp_path):
    root = ScriptedBackend([repl("FINAL('é' * 10)")])
    result = RLM(root, log_dir=tmp_path).run("q", context="c")
    data = result.trajectory.read_bytes()
    good = len(read_trajectory(result.trajectory))
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    cut = data.index("é".encode(), last_start) + 1  # mid character: the bytes end inside a UTF-8 sequence
    result.trajectory.write_bytes(data[:cut])
    assert len(read_trajectory(result.trajectory)) == good - 1


def test_cli_show_explains_files_that_are_not_logs(tmp_path):
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)))
    run = CliRunner().invoke(app, ["show", str(binary)])
    assert run.exit_code == 2 and "not UTF-8 text" in out(run), run.output
    other = tmp_path / "other.jsonl"
    other.write_text('{"name": "x"}')
    run = CliRunner().invoke(app, ["show", str(other)])
    assert run.exit_code == 2 and "line 1 is not a loopagent event" in out(run)


# -- 6. CLI arguments -----------------------------------------------------------------------------------------


def test_cli_sandbox_with_a_missing_context_is_a_clear_error(tmp_path):
    run = CliRunner().invoke(app, ["sandbox", "print(1)", "-c", str(tmp_path / "missing")])
    assert run.exit_code == 2, run.output
    assert "error:" in out(run) and "does not exist" in out(run)
    assert isinstance(run.exception, SystemExit)  # no traceback
    run = CliRunner().invoke(app, ["sandbox", "print(1)", "--memory-mb", "10"])
    assert run.exit_code == 2 and "--memory-mb: Input should be greater than or equal to 256" in out(run)


def test_cli_child_loops_is_checked_and_applies_without_child(tmp_path):
    replies = tmp_path / "root.json"
    replies.write_text(json.dumps({"replies": [repl("FINAL(str(llm_query('hi')))")], "looped": True,
                                   "max_loops": 8}))
    for flag in ("--child-loops", "--root-loops"):
        run = CliRunner().invoke(app, ["run", "q", "--root", f"scripted:{replies}", flag, "0",
                                       "--log-dir", str(tmp_path / "runs")])
        assert run.exit_code == 2 and f"{flag} must be a positive integer, got 0" in out(run), run.output
    assert not (tmp_path / "runs").exists()  # refused before anything ran
    run = CliRunner().invoke(app, ["run", "q", "--root", f"scripted:{replies}", "--child-loops", "3",
                                   "--log-dir", str(tmp_path / "runs"), "--json"])
    assert run.exit_code == 0, run.output
    result = json.loads(run.output)
    calls = [e for e in read_trajectory(result["trajectory"]) if e.type == "sub_call"]
    assert [c.loops_chosen for c in calls] == [3]


def test_backend_error_in_batch_is_still_an_error_entry():
    def down(messages, loops):
        raise BackendError("server down")

    root = ScriptedBackend([repl("print(llm_batch(['a']))"), repl("FINAL('x')")])
    RLM(root, ScriptedBackend(down, name="d")).run("q", context="c")
    assert "[error: server down]" in root.calls[1]["messages"][-1]["content"]


def test_a_final_answer_over_the_sandbox_message_limit_never_reaches_the_host(tmp_path):
    root = ScriptedBackend([repl("FINAL('x' * 3_000_000)"), repl("FINAL('short')")])
    result = RLM(root, sandbox={"max_message_mb": 1}, log_dir=tmp_path).run("q", context="c")
    assert result.answer == "short" and result.iterations == 2
    first = events_of(result, "repl_exec")[0]
    assert first.error_type == "ValueError" and "larger than the 1.0 MB a host call takes" in first.error


def test_a_newer_schema_is_refused_even_when_its_events_would_validate(tmp_path):
    """The version is checked before the fields: a newer event may parse and mean something else."""
    run = RLM(ScriptedBackend([repl("FINAL('x')")]), log_dir=tmp_path).run("q", context="c")
    newer = tmp_path / "newer.jsonl"
    newer.write_text(run.trajectory.read_text().replace(f'"v":{SCHEMA_VERSION},', f'"v":{SCHEMA_VERSION + 1},'))
    with pytest.raises(TrajectoryError, match="upgrade loopagent") as info:
        read_trajectory(newer)
    assert info.value.version == SCHEMA_VERSION + 1


def test_lone_surrogates_in_output_prompts_and_answers_are_logged_and_cached(tmp_path):
    """The REPL carries lone surrogates through; the log (JSON) and the cache key escape them
    instead of crashing the run, and the disk cache skips a reply it cannot store."""
    from loopagent.trajectory import read_trajectory

    root = ScriptedBackend(["```repl\nprint('\\ud800')\nx = llm_query('a\\ud800b')\nprint(x)\n```",
                            "```repl\nFINAL('a\\ud800b')\n```"])
    child = ScriptedBackend(lambda messages, loops: "re:" + messages[-1]["content"], temperature=0.0, name="c")
    result = RLM(root, child, log_dir=tmp_path / "runs", cache=tmp_path / "cache").run("q", context="x")
    assert result.reason == "final" and result.answer == "a\ud800b"
    cells = [e for e in read_trajectory(result.trajectory) if e.type == "repl_exec"]
    assert cells[0].stdout == "\ud800\nre:a\ud800b\n"  # read back as the same strings
