"""Fixtures of the viewer tests: real trajectories from scripted runs, and a headless Chromium.

Chromium is installed from the Debian package when it is missing and this process may
(root, apt-get present); elsewhere the browser tests skip and say why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from loopagent import RLM
from loopagent.backends.base import LoopStats
from loopagent.backends.scripted import ScriptedBackend
from loopagent.evals.store import RESULTS, Record
from loopagent.trajectory import FinalAnswer, ReplExec, RootTurn, RunEnd, RunStart, SubCall, TrajectoryWriter
from loopagent.usage import UsageTotals

INJECTION = "</script><script>document.title='pwned'</script><img src=x onerror=\"document.title='img'\">"


def repl(code: str) -> str:
    return f"```repl\n{textwrap.dedent(code).strip()}\n```"


class AdaptiveChild(ScriptedBackend):
    """A looped child whose exit gates stop tokens early (it reports an exit-depth histogram) and
    that has a price, like an adaptive looped model behind litellm."""

    async def acomplete(self, messages, **kwargs):
        completion = await super().acomplete(messages, **kwargs)
        if completion.loops is not None:
            budget = completion.loops.requested
            hist = {1: 1, max(1, budget // 2): 2, budget: 3}
            mean = sum(k * v for k, v in hist.items()) / sum(hist.values())
            completion.loops = LoopStats(requested=budget, executed_mean=mean, exit_histogram=hist)
        completion.usage.usd = 0.0005
        return completion


def _child_script(messages, loops):
    """Plain child calls answer at once; the child model as the root of an rlm_query run writes code."""
    if messages[0]["role"] == "system":
        return repl("FINAL(str(len(context)))")
    return f"child@{loops}"


def _root_script(messages, loops):
    turns = sum(1 for m in messages if m["role"] == "assistant")
    if turns == 0:
        return (f"Let me look. {INJECTION}\n"
                + repl("parts = llm_batch(['summarize part ' + str(i) for i in range(3)])\nprint(parts)"))
    if turns == 1:
        return repl(f"sub = rlm_query('Count the letters', context='abcd')\nprint(sub, {INJECTION!r})\n1 / 0")
    return repl("FINAL('child said ' + sub + ' and ' + llm_query('combine', loops=2))")


def make_run(log_dir: Path, *, child_loops: int = 4) -> tuple[Path, object]:
    """A real run: llm_batch (concurrent), an rlm_query child run, a REPL error, loops=2, a final answer."""
    child = AdaptiveChild(_child_script, name="child", looped=True,
                          default_loops=child_loops, max_loops=8, latency_s=0.03)
    root = ScriptedBackend(_root_script, name="root")
    result = RLM(root, child, max_depth=2, log_dir=log_dir).run("What is in the document?", context="x" * 500)
    assert result.finished, result
    return Path(result.trajectory), result


@pytest.fixture(scope="session")
def real_run(tmp_path_factory) -> tuple[Path, object]:
    return make_run(tmp_path_factory.mktemp("run"))


def write_big_log(path: Path, calls: int = 3000) -> None:
    """A run whose one REPL cell made ``calls`` llm_batch calls (a large map step)."""
    w = TrajectoryWriter(path, text_limit=None)
    rid, t = "big000000001", 1_800_000_000.0
    w.write(RunStart(run_id=rid, ts=t, query="Summarize every section", context={"type": "str", "chars": 10**7},
                     config={"root": {"name": "root"}, "child": {"name": "child", "default_loops": 4}}))
    w.write(RootTurn(run_id=rid, ts=t + 1, iteration=0, prompt="Summarize every section",
                     completion=repl("r = llm_batch(prompts)"), model="root", usage={"prompt_tokens": 900,
                     "completion_tokens": 20, "wall_s": 1.0}))
    for i in range(calls):
        w.write(SubCall(run_id=rid, ts=t + 1.5 + i * 0.001, kind="llm_batch", index=i, model="child",
                        prompt=f"section prompt {i}", response=f"summary {i}", loops_chosen=4, loops_executed=4.0,
                        usage={"prompt_tokens": 50, "completion_tokens": 5, "loop_tokens": 220, "wall_s": 0.4}))
    w.write(ReplExec(run_id=rid, ts=t + 5, iteration=0, code="r = llm_batch(prompts)", stdout="", duration_s=3.9,
                     host_calls=calls))
    w.write(FinalAnswer(run_id=rid, ts=t + 5.1, answer="done", source="FINAL"))
    w.write(RunEnd(run_id=rid, ts=t + 5.2, answer="done", finished=True, reason="final", iterations=1, wall_s=5.2))
    w.close()


def eval_dir(tmp_path: Path, logs: dict[str, Path]) -> Path:
    """An eval output directory (results.jsonl, trajectories/) holding one item per configuration."""
    out = tmp_path / "eval"
    lines = []
    for config, log in logs.items():
        rel = Path("trajectories") / config / "item-0.jsonl"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(log.read_bytes())
        lines.append(Record(
            config=config, kind="rlm", root_loops=None, child_loops=int(config[-1]), depth=1, length=1000,
            item_id="item-0", task="sniah", length_chars=1000, prediction="4", gold="4",
            score=1.0 if config.endswith("8") else 0.5, finished=True, reason="final", iterations=3,
            usage=UsageTotals(calls=8, loop_tokens=1600, usd=0.01), wall_s=1.0, model_time_s=0.5,
            trajectory=str(rel)).model_dump_json())
    (out / RESULTS).write_text("\n".join(lines) + "\n")
    return out


# -- the browser ------------------------------------------------------------------------------------
def _install_chromium() -> str | None:
    """Path of a Chromium, installing the Debian package if we can; None when we cannot."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if shutil.which("apt-get") is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=900)
        subprocess.run(install, env=env, capture_output=True, timeout=900)
    return shutil.which("chromium")


@dataclass
class Browser:
    """Headless Chromium: the DOM after the page's scripts ran, or a screenshot."""

    binary: str
    profile: Path

    def _args(self) -> list[str]:
        return [self.binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={self.profile}",
                "--virtual-time-budget=5000"]

    def dom(self, url: str) -> str:
        done = subprocess.run([*self._args(), "--dump-dom", url], capture_output=True, text=True, timeout=90)
        assert done.returncode == 0, done.stderr[-2000:]
        assert 'data-ready="true"' in done.stdout, "the page's script did not finish: " + done.stdout[-2000:]
        return done.stdout

    def screenshot(self, url: str, path: Path, size: str = "1280,1000") -> Path:
        done = subprocess.run([*self._args(), f"--screenshot={path}", f"--window-size={size}", url],
                              capture_output=True, text=True, timeout=90)
        assert done.returncode == 0, done.stderr[-2000:]
        return path


@pytest.fixture(scope="session")
def browser() -> Browser:
    binary = _install_chromium()
    if binary is None:
        pytest.skip("headless Chromium is not installed and cannot be installed here (needs root and apt-get)")
    with tempfile.TemporaryDirectory(prefix="loopagent-chromium-") as profile:
        yield Browser(binary, Path(profile))


@pytest.fixture
def url_of() -> Callable[[Path], str]:
    return lambda path: Path(path).resolve().as_uri()


@pytest.fixture(scope="session")
def helpers() -> SimpleNamespace:
    """This file's builders for the test modules (conftest is not importable under importlib mode)."""
    return SimpleNamespace(make_run=make_run, write_big_log=write_big_log, eval_dir=eval_dir, injection=INJECTION,
                           repl=repl)
