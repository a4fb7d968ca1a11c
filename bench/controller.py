#!/usr/bin/env python
"""Controller benchmark: loopagent's RLM side by side with rlms' RLM.

Run from the repository root (after ``pip install -e '.[bench]'``)::

    python bench/controller.py            # full run, about half a minute
    python bench/controller.py --quick    # smoke test: fewer repetitions
    python bench/controller.py --out /tmp/x.json --skip-rlms

What is measured (one process, one run):

1. controller overhead per iteration: one scripted trajectory of 10 root turns
   (inspect the context, slice it, search it, three ``llm_query`` calls, an
   8-way batch, aggregate, count, final answer) is run end to end through each
   library with models that answer at once. loopagent: ``RLM.run`` with its
   sandboxed REPL and a JSONL trajectory in a temporary ``log_dir`` (and, for
   reference, without ``log_dir``). rlms: ``RLM.completion`` with its
   ``LocalREPL`` and a scripted ``BaseLM`` client (installed by replacing the
   ``get_client`` that ``rlm.core.rlm`` calls), with an ``RLMLogger`` writing to
   a temporary folder (and without a logger). Model time is the time spent
   inside the scripted model calls; overhead per iteration is
   ``(wall - model time) / iterations``, median over the repetitions. It is
   also split into setup (run start to the first model call) and the rest.
   The trajectory is the same for both; only the library conventions differ
   (loopagent: ``llm_batch`` / ``FINAL(...)``; rlms: ``llm_query_batched`` /
   ``answer["content"] = ...; answer["ready"] = True``).
2. batch fan-out: a cell with a 64-prompt ``llm_batch`` vs a cell with one
   ``llm_query``, against a child model with a fixed 50 ms latency
   (``ScriptedBackend(latency_s=0.05)``); cell times are the ``repl_exec``
   ``duration_s`` of loopagent's trajectory log. For context, the same with rlms'
   ``llm_query_batched`` (cell times from its logger's ``execution_time``).

3. tools: a cell that calls a user function (``lookup(i)``, returns ``2 * i``)
   ``TOOL_N`` times in a loop, against the same cell doing the arithmetic inline;
   the difference over ``TOOL_N`` is the cost of one tool call (cell times as in 2).
   loopagent: ``RLM(tools=...)`` (the call crosses from the sandboxed worker to the
   parent); rlms: ``RLM(custom_tools=...)`` (a plain function in its in-process REPL).
4. 1,000 sub-calls: one cell sends ``llm_batch`` of ``SUB_N`` prompts of which
   ``SUB_UNIQUE`` differ, to a child that answers in ``SUB_LATENCY_S``; the cell time and the
   child calls made, for loopagent with its sub-call cache off and on (a greedy
   child: ``temperature=0``) and for rlms' ``llm_query_batched`` (no cache).

Targets: loopagent's overhead per iteration <= rlms'; 64-way batch cell <= 2x
the single-call cell; with the cache on, the 1,000-call cell makes exactly
``SUB_UNIQUE`` child calls. The table is printed and everything is written as JSON
(default bench/results/controller.json). A missed target does not change the
exit status (use --strict for that); a loopagent measurement that fails does.
Without rlms installed, its columns show n/a.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    MS,
    RESULTS_DIR,
    BaseAdapter,
    Row,
    RowMaker,
    bench_args,
    finish,
    log,
    lookup,
    make_peer,
    median,
    run_steps,
    summarize,
)

DEFAULT_OUT = RESULTS_DIR / "controller.json"
LATENCY_S = 0.05
BATCH_N = 64
QUERY = "How often is the lighthouse mentioned, and what is its keeper called?"
TOOL_N = 200
SUB_N, SUB_UNIQUE = 1000, 100
SUB_LATENCY_S = 0.005


@dataclass(frozen=True)
class Config:
    overhead_reps: int  # measured runs per configuration (after one warm-up run)
    batch_reps: int  # batch/single cell pairs per fan-out run (after one warm-up pair)
    context_kb: int

    @classmethod
    def for_mode(cls, quick: bool) -> Config:
        if quick:
            return cls(overhead_reps=3, batch_reps=2, context_kb=200)
        return cls(overhead_reps=15, batch_reps=5, context_kb=200)


def make_context(kb: int) -> str:
    """Prose-like ASCII text of ``kb`` KiB with a few 'lighthouse' needles."""
    words = ("the quick brown fox jumps over a lazy dog while seven wizards quietly "
             "judge boxing matches near 42 old river banks;").split(" ")
    lines = [" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) for i in range(400)]
    for k in range(0, 400, 57):
        lines[k] = f"the lighthouse keeper Mara Quill lit the lamp on night {k}"
    block = "\n".join(lines) + "\n"
    size = kb * 1024
    return (block * (size // len(block) + 1))[:size]


# -- the trajectory ----------------------------------------------------------------------
def _cells(batch_fn: str) -> list[tuple[str, str]]:
    """(prose, code) of every root turn but the last; identical for both libraries
    except the batch function's name."""
    return [
        ("Let me look at the context first.",
         "print(type(context).__name__, len(context))\nprint(context[:300])"),
        ("I will split it into chunks.",
         "size = 20000\nchunks = [context[i:i + size] for i in range(0, len(context), size)]\n"
         "print(len(chunks), [len(c) for c in chunks][:5])"),
        ("Where is the lighthouse mentioned?",
         "hits = [i for i, c in enumerate(chunks) if 'lighthouse' in c]\nprint(hits)"),
        ("Summarize the first chunk.",
         "first = llm_query('Summarize this part:\\n' + chunks[0][:2000])\nprint(first)"),
        ("And the chunk with the first hit.",
         "second = llm_query('Who keeps the lighthouse?\\n' + chunks[hits[0]][:2000])\nprint(second)"),
        ("And the last chunk.",
         "third = llm_query('Summarize this part:\\n' + chunks[-1][:2000])\nprint(third)"),
        ("Key facts from the first eight chunks at once.",
         f"notes = {batch_fn}(['Key facts in:\\n' + c[:1000] for c in chunks[:8]])\n"
         "print(len(notes), notes[0])"),
        ("Combine what I have.",
         "summary = '\\n'.join([first, second, third] + notes)\nprint(len(summary))"),
        ("Count the mentions.",
         "count = sum(c.count('lighthouse') for c in context.split('\\n'))\nprint(count)"),
    ]


FINAL_LOOPAGENT = "FINAL('The lighthouse is mentioned ' + str(count) + ' times; its keeper is Mara Quill.')"
FINAL_RLMS = ("answer['content'] = 'The lighthouse is mentioned ' + str(count) + ' times; its keeper is Mara Quill.'\n"
              "answer['ready'] = True")


def _reply(prose: str, code: str) -> str:
    return f"{prose}\n```repl\n{code}\n```"


def loopagent_script() -> list[str]:
    return [_reply(p, c) for p, c in _cells("llm_batch")] + [_reply("Done.", FINAL_LOOPAGENT)]


def rlms_script() -> list[str]:
    return [_reply(p, c) for p, c in _cells("llm_query_batched")] + [_reply("Done.", FINAL_RLMS)]


def expected_answer(context: str) -> str:
    count = sum(line.count("lighthouse") for line in context.split("\n"))
    return f"The lighthouse is mentioned {count} times; its keeper is Mara Quill."


def child_reply(prompt: str) -> str:
    return f"summary of {len(prompt)} characters: the keeper is Mara Quill"


BATCH_CELL_LOOPAGENT = f"rs = llm_batch(['question ' + str(i) for i in range({BATCH_N})])\nprint(len(rs))"
BATCH_CELL_RLMS = f"rs = llm_query_batched(['question ' + str(i) for i in range({BATCH_N})])\nprint(len(rs))"
SINGLE_CELL = "r = llm_query('question')\nprint(len(r))"


def fanout_script(batch_cell: str, final_code: str, pairs: int) -> list[str]:
    replies = []
    for _ in range(pairs):
        replies += [_reply("Batch.", batch_cell), _reply("One call.", SINGLE_CELL)]
    return replies + [_reply("Done.", final_code)]


class CheckError(RuntimeError):
    pass


PLAIN_CELL = f"acc = 0\nfor i in range({TOOL_N}):\n    acc += 2 * i\nprint(acc)"
TOOL_CELL = f"acc = 0\nfor i in range({TOOL_N}):\n    acc += lookup(i)\nprint(acc)"
TOOL_SUM = sum(2 * i for i in range(TOOL_N))
SUB_CELL = (f"ps = ['question ' + str(i % {SUB_UNIQUE}) for i in range({SUB_N})]\n"
            "rs = {batch}(ps)\nprint(len(rs), len(set(rs)))")


def twice(i: int) -> int:
    """Twice ``i`` (the benchmark's tool)."""
    return 2 * i


def tools_script(final_code: str, pairs: int) -> list[str]:
    replies = []
    for _ in range(pairs):
        replies += [_reply("Inline.", PLAIN_CELL), _reply("With the tool.", TOOL_CELL)]
    return replies + [_reply("Done.", final_code)]


def _tool_stats(plain: list[float], tool: list[float]) -> dict[str, Any]:
    plain, tool = plain[1:], tool[1:]  # first pair: warm-up
    if not plain or not tool:
        raise CheckError("no tool cell times")
    return {"n": TOOL_N, "plain_cell_ms": summarize(plain, MS), "tool_cell_ms": summarize(tool, MS),
            "per_call_ms": (median(tool) - median(plain)) / TOOL_N * MS}


# -- model clocks ----------------------------------------------------------------------------
class Clock:
    """Time spent inside model calls (thread-safe; calls may come from several threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total = 0.0
        self.calls = 0
        self.first: float | None = None
        self.last: float | None = None

    def add(self, t0: float, t1: float) -> None:
        with self._lock:
            self.total += t1 - t0
            self.calls += 1
            self.first = t0 if self.first is None else min(self.first, t0)
            self.last = t1 if self.last is None else max(self.last, t1)


def _run_stats(wall: float, start: float, clock: Clock, iterations: int, sub_calls: int) -> dict[str, Any]:
    """Split a run's wall time: setup (start to the first model call), the turns
    (first model call to the end of the last, minus time inside model calls:
    iterations - 1 complete turns of parse + exec + log + next prompt) and
    teardown (end of the last model call to the return: the final cell and cleanup)."""
    first = clock.first if clock.first is not None else start
    last = clock.last if clock.last is not None else start + wall
    turns = last - first - clock.total
    return {
        "wall_s": wall,
        "model_s": clock.total,
        "model_calls": clock.calls,
        "iterations": iterations,
        "sub_calls": sub_calls,
        "overhead_per_iter_s": (wall - clock.total) / iterations,
        "setup_s": first - start,
        "per_turn_s": turns / max(1, iterations - 1),
        "teardown_s": start + wall - last,
    }


def _summarize_runs(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    keys = ("overhead_per_iter_s", "setup_s", "per_turn_s", "teardown_s", "wall_s", "model_s")
    out: dict[str, Any] = {k[:-2] + "_ms": summarize([r[k] for r in runs], MS) for k in keys}
    out["iterations"] = runs[0]["iterations"]
    out["model_calls"] = runs[0]["model_calls"]
    out["sub_calls"] = runs[0]["sub_calls"]
    out["runs"] = list(runs)
    return out


# -- adapters ---------------------------------------------------------------------------------
class Adapter(BaseAdapter):
    def overhead_run(self, context: str, *, logging: bool, tmp: Path) -> dict[str, Any]:
        raise NotImplementedError

    def fanout_run(self, pairs: int, tmp: Path) -> dict[str, Any]:
        raise NotImplementedError


class LoopagentAdapter(Adapter):
    name = "loopagent"

    def __init__(self) -> None:
        from loopagent import RLM
        from loopagent.backends.scripted import ScriptedBackend
        from loopagent.trajectory import read_trajectory

        class TimedBackend(ScriptedBackend):
            """ScriptedBackend that adds the time spent in each call to a clock."""

            clock: Clock

            async def acomplete(self, messages: Any, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return await super().acomplete(messages, **kwargs)
                finally:
                    self.clock.add(t0, time.perf_counter())

        self.RLM = RLM
        self.TimedBackend = TimedBackend
        self.read_trajectory = read_trajectory

    def _backend(self, replies: Any, clock: Clock, name: str, latency_s: float = 0.0) -> Any:
        b = self.TimedBackend(replies, name=name, latency_s=latency_s)
        b.clock = clock
        return b

    def overhead_run(self, context: str, *, logging: bool, tmp: Path) -> dict[str, Any]:
        clock = Clock()
        root = self._backend(loopagent_script(), clock, "scripted-root")
        child = self._backend(lambda messages, loops: child_reply(messages[-1]["content"]), clock, "scripted-child")
        log_dir = tmp / "loopagent-logs" if logging else None
        rlm = self.RLM(root=root, child=child, max_iterations=20, log_dir=log_dir)
        gc.collect()
        t0 = time.perf_counter()
        result = rlm.run(QUERY, context=context)
        wall = time.perf_counter() - t0
        want = expected_answer(context)
        if not result.finished or result.answer != want:
            raise CheckError(f"loopagent run ended with {result.reason} ({result.detail}); "
                             f"answer {result.answer!r}, want {want!r}")
        if logging and (result.trajectory is None or not result.trajectory.exists()):
            raise CheckError("loopagent wrote no trajectory log")
        stats = _run_stats(wall, t0, clock, result.iterations, len(child.calls))
        if logging:
            stats["log_bytes"] = result.trajectory.stat().st_size
        return stats

    def fanout_run(self, pairs: int, tmp: Path) -> dict[str, Any]:
        root_clock, child_clock = Clock(), Clock()
        final = "FINAL('done')"
        root = self._backend(fanout_script(BATCH_CELL_LOOPAGENT, final, pairs), root_clock, "scripted-root")
        child = self._backend(lambda messages, loops: "ok", child_clock, "scripted-child-50ms", latency_s=LATENCY_S)
        rlm = self.RLM(root=root, child=child, max_iterations=2 * pairs + 5, log_dir=tmp / "loopagent-fanout")
        result = rlm.run("fan-out", context="x")
        if not result.finished or result.answer != "done" or result.trajectory is None:
            raise CheckError(f"loopagent fan-out run ended with {result.reason} ({result.detail})")
        batch, single = [], []
        for ev in self.read_trajectory(result.trajectory):
            if ev.type != "repl_exec" or ev.code.startswith("FINAL"):
                continue
            if ev.error:
                raise CheckError(f"loopagent fan-out cell failed: {ev.error}")
            if "llm_batch" in ev.code:
                if ev.stdout.strip() != str(BATCH_N) or ev.host_calls != 1:
                    raise CheckError(f"loopagent batch cell printed {ev.stdout!r} with {ev.host_calls} host calls")
                batch.append(ev.duration_s)
            else:
                single.append(ev.duration_s)
        if len(child.calls) != pairs * (BATCH_N + 1):
            raise CheckError(f"loopagent made {len(child.calls)} child calls, want {pairs * (BATCH_N + 1)}")
        return {"batch_cell_s": batch, "single_cell_s": single}

    def _cells(self, result: Any) -> list[Any]:
        cells = [ev for ev in self.read_trajectory(result.trajectory)
                 if ev.type == "repl_exec" and not ev.code.startswith("FINAL")]
        for ev in cells:
            if ev.error:
                raise CheckError(f"loopagent cell failed: {ev.error}")
        return cells

    def tools_run(self, pairs: int, tmp: Path) -> dict[str, Any]:
        root = self._backend(tools_script("FINAL('done')", pairs), Clock(), "scripted-root")
        rlm = self.RLM(root=root, max_iterations=2 * pairs + 5, log_dir=tmp / "loopagent-tools",
                       tools={"lookup": twice})
        result = rlm.run("tools", context="x")
        if not result.finished or result.trajectory is None:
            raise CheckError(f"loopagent tools run ended with {result.reason} ({result.detail})")
        cells = self._cells(result)
        if any(ev.stdout.strip() != str(TOOL_SUM) for ev in cells):
            raise CheckError("a loopagent tools cell printed the wrong sum")
        return _tool_stats([ev.duration_s for ev in cells if "lookup" not in ev.code],
                           [ev.duration_s for ev in cells if "lookup" in ev.code])

    def subcalls_run(self, cache: bool, tmp: Path) -> dict[str, Any]:
        root = self._backend([_reply("Ask.", SUB_CELL.format(batch="llm_batch")), _reply("Done.", "FINAL('done')")],
                             Clock(), "scripted-root")
        child = self.TimedBackend(lambda messages, loops: "answer to " + messages[-1]["content"],
                                  name="scripted-child", temperature=0.0, latency_s=SUB_LATENCY_S)
        child.clock = Clock()
        rlm = self.RLM(root=root, child=child, log_dir=tmp / f"loopagent-subcalls-{cache}", cache=cache)
        result = rlm.run("sub-calls", context="x")
        if not result.finished or result.trajectory is None:
            raise CheckError(f"loopagent sub-call run ended with {result.reason} ({result.detail})")
        (cell,) = self._cells(result)
        if cell.stdout.split() != [str(SUB_N), str(SUB_UNIQUE)]:
            raise CheckError(f"loopagent sub-call cell printed {cell.stdout!r}")
        return {"cell_ms": cell.duration_s * MS, "child_calls": len(child.calls),
                "cache_hits": result.usage.total.cache_hits}


class RlmsAdapter(Adapter):
    name = "rlms"

    def __init__(self) -> None:
        import rlm.core.rlm as rlm_core
        from rlm import RLM
        from rlm.clients.base_lm import BaseLM
        from rlm.core.types import ModelUsageSummary, UsageSummary
        from rlm.logger import RLMLogger

        class ScriptedLM(BaseLM):
            """Root turns from a script (the root prompt is a message list), child calls
            (a str prompt) from ``child``; the time spent inside calls goes to a clock."""

            def __init__(self, script: Sequence[str], child: Callable[[str], str], clock: Clock,
                         child_latency_s: float = 0.0) -> None:
                super().__init__(model_name="scripted")
                self.script = list(script)
                self.child = child
                self.clock = clock
                self.child_latency_s = child_latency_s
                self.root_calls = 0
                self.child_calls = 0
                self._lock = threading.Lock()

            def _answer(self, prompt: Any) -> tuple[str, bool]:
                with self._lock:
                    if isinstance(prompt, list):
                        if self.root_calls >= len(self.script):
                            raise RuntimeError("the script has no reply left")
                        self.root_calls += 1
                        return self.script[self.root_calls - 1], False
                    self.child_calls += 1
                return self.child(prompt if isinstance(prompt, str) else str(prompt)), True

            def completion(self, prompt: Any) -> str:
                t0 = time.perf_counter()
                try:
                    text, is_child = self._answer(prompt)
                    if is_child and self.child_latency_s:
                        time.sleep(self.child_latency_s)
                    return text
                finally:
                    self.clock.add(t0, time.perf_counter())

            async def acompletion(self, prompt: Any) -> str:
                t0 = time.perf_counter()
                try:
                    text, is_child = self._answer(prompt)
                    if is_child and self.child_latency_s:
                        await asyncio.sleep(self.child_latency_s)
                    return text
                finally:
                    self.clock.add(t0, time.perf_counter())

            def get_usage_summary(self) -> Any:
                return UsageSummary(model_usage_summaries={self.model_name: self.get_last_usage()})

            def get_last_usage(self) -> Any:
                return ModelUsageSummary(total_calls=self.root_calls + self.child_calls,
                                         total_input_tokens=0, total_output_tokens=0)

        self.core = rlm_core
        self.RLM = RLM
        self.RLMLogger = RLMLogger
        self.ScriptedLM = ScriptedLM
        self._original_get_client = rlm_core.get_client
        self._client: Any = None
        # rlms builds its client per completion() through this name; hand it ours.
        rlm_core.get_client = self._get_client

    def _get_client(self, backend: Any, backend_kwargs: Any) -> Any:
        if self._client is None:
            raise RuntimeError("no scripted client prepared")
        client, self._client = self._client, None
        return client

    def _completion(self, client: Any, context: Any, query: str, *, max_iterations: int,
                    logger: Any) -> tuple[Any, float, float]:
        self._client = client
        rlm = self.RLM(backend="openai", backend_kwargs={"model_name": "scripted"}, environment="local",
                       max_iterations=max_iterations, logger=logger, verbose=False)
        gc.collect()
        t0 = time.perf_counter()
        try:
            result = rlm.completion(context, root_prompt=query)
        finally:
            rlm.close()
        return result, t0, time.perf_counter() - t0

    def overhead_run(self, context: str, *, logging: bool, tmp: Path) -> dict[str, Any]:
        clock = Clock()
        client = self.ScriptedLM(rlms_script(), child_reply, clock)
        logger = self.RLMLogger(log_dir=str(tmp / "rlms-logs")) if logging else None
        result, t0, wall = self._completion(client, context, QUERY, max_iterations=20, logger=logger)
        want = expected_answer(context)
        if result.response != want:
            raise CheckError(f"rlms answered {result.response!r}, want {want!r}")
        stats = _run_stats(wall, t0, clock, client.root_calls, client.child_calls)
        if logging and logger.log_file_path:
            stats["log_bytes"] = Path(logger.log_file_path).stat().st_size
        return stats

    def fanout_run(self, pairs: int, tmp: Path) -> dict[str, Any]:
        final = "answer['content'] = 'done'\nanswer['ready'] = True"
        client = self.ScriptedLM(fanout_script(BATCH_CELL_RLMS, final, pairs), lambda p: "ok", Clock(),
                                 child_latency_s=LATENCY_S)
        logger = self.RLMLogger()  # in memory: its iterations carry each cell's execution_time
        result, _, _ = self._completion(client, "x", "fan-out", max_iterations=2 * pairs + 5, logger=logger)
        if result.response != "done":
            raise CheckError(f"rlms fan-out run answered {result.response!r}")
        batch, single = [], []
        for code, res in self._cells(result):
            (batch if "llm_query_batched" in code else single).append(res["execution_time"])
        if client.child_calls != pairs * (BATCH_N + 1):
            raise CheckError(f"rlms made {client.child_calls} child calls, want {pairs * (BATCH_N + 1)}")
        return {"batch_cell_s": batch, "single_cell_s": single}

    def _cells(self, result: Any) -> list[tuple[str, Any]]:
        """(code, result) of every cell of an rlms run but the final answer's; a failed cell raises."""
        cells = []
        for it in (result.metadata or {}).get("iterations", []):
            for block in it["code_blocks"]:
                code, res = block["code"], block["result"]
                if code.startswith("answer"):
                    continue
                if res["stderr"] or "Error" in res["stdout"]:
                    raise CheckError(f"rlms cell failed: {res['stderr'] or res['stdout']}")
                cells.append((code, res))
        return cells

    def tools_run(self, pairs: int, tmp: Path) -> dict[str, Any]:
        final = "answer['content'] = 'done'\nanswer['ready'] = True"
        client = self.ScriptedLM(tools_script(final, pairs), lambda p: "ok", Clock())
        self._client = client
        rlm = self.RLM(backend="openai", backend_kwargs={"model_name": "scripted"}, environment="local",
                       max_iterations=2 * pairs + 5, logger=self.RLMLogger(), verbose=False,
                       custom_tools={"lookup": twice})
        try:
            result = rlm.completion("x", root_prompt="tools")
        finally:
            rlm.close()
        cells = self._cells(result)
        if any(res["stdout"].strip() != str(TOOL_SUM) for _, res in cells):
            raise CheckError("an rlms tools cell printed the wrong sum")
        return _tool_stats([res["execution_time"] for code, res in cells if "lookup" not in code],
                           [res["execution_time"] for code, res in cells if "lookup" in code])

    def subcalls_run(self, cache: bool, tmp: Path) -> dict[str, Any]:
        final = "answer['content'] = 'done'\nanswer['ready'] = True"
        script = [_reply("Ask.", SUB_CELL.format(batch="llm_query_batched")), _reply("Done.", final)]
        client = self.ScriptedLM(script, lambda p: "answer to " + p, Clock(), child_latency_s=SUB_LATENCY_S)
        result, _, _ = self._completion(client, "x", "sub-calls", max_iterations=5, logger=self.RLMLogger())
        ((_, res),) = self._cells(result)
        if res["stdout"].split() != [str(SUB_N), str(SUB_UNIQUE)]:
            raise CheckError(f"rlms sub-call cell printed {res['stdout']!r}")
        return {"cell_ms": res["execution_time"] * MS, "child_calls": client.child_calls, "cache_hits": 0}

    def shutdown(self) -> None:
        self.core.get_client = self._original_get_client


# -- measurements -------------------------------------------------------------------------------
def measure_overhead(a: Adapter, context: str, reps: int, logging: bool, tmp: Path) -> dict[str, Any]:
    a.overhead_run(context, logging=logging, tmp=tmp)  # warm-up: imports, tokenizer, caches
    runs = [a.overhead_run(context, logging=logging, tmp=tmp) for _ in range(reps)]
    return _summarize_runs(runs)


def measure_fanout(a: Adapter, reps: int, tmp: Path) -> dict[str, Any]:
    r = a.fanout_run(reps + 1, tmp)
    batch, single = r["batch_cell_s"][1:], r["single_cell_s"][1:]  # first pair: warm-up
    if not batch or not single:
        raise CheckError("no fan-out cell times")
    return {
        "n": BATCH_N,
        "latency_ms": LATENCY_S * MS,
        "batch_cell_ms": summarize(batch, MS),
        "single_cell_ms": summarize(single, MS),
        "ratio": median(batch) / median(single),
        "warmup_batch_cell_ms": r["batch_cell_s"][0] * MS,
        "warmup_single_cell_ms": r["single_cell_s"][0] * MS,
    }


def run_all(a: Adapter, cfg: Config, context: str) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-controller-{a.name}-"))
    try:
        return run_steps(a.name, {
            "overhead_logged": lambda: measure_overhead(a, context, cfg.overhead_reps, True, tmp),
            "overhead_unlogged": lambda: measure_overhead(a, context, cfg.overhead_reps, False, tmp),
            "fanout": lambda: measure_fanout(a, cfg.batch_reps, tmp),
            "tools": lambda: a.tools_run(cfg.batch_reps + 1, tmp),
            # rlms has no sub-call cache: its run is the same in both entries
            "subcalls_cache_off": lambda: a.subcalls_run(False, tmp),
            "subcalls_cache_on": lambda: a.subcalls_run(True, tmp),
        })
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _not_above_peer(o: float, p: float | None) -> bool | None:
    return None if p is None else o <= p  # no verdict without rlms


def build_rows(ours: dict[str, Any], peer: dict[str, Any] | None, peer_reason: str) -> list[Row]:
    row = RowMaker(ours, peer, peer_reason)
    row("overhead per iteration, logging on, median", "overhead_logged", ("overhead_per_iter_ms", "median"), "ms",
        "<= rlms", _not_above_peer)
    row("overhead per iteration, logging on, p90", "overhead_logged", ("overhead_per_iter_ms", "p90"), "ms")
    row("  setup: run start to 1st model call", "overhead_logged", ("setup_ms", "median"), "ms")
    row("  per turn between 1st and last model call", "overhead_logged", ("per_turn_ms", "median"), "ms")
    row("  teardown: last model call to return", "overhead_logged", ("teardown_ms", "median"), "ms")
    row("overhead per iteration, logging off, median", "overhead_unlogged", ("overhead_per_iter_ms", "median"), "ms",
        "<= rlms", _not_above_peer)
    row("  per turn, logging off", "overhead_unlogged", ("per_turn_ms", "median"), "ms")
    row("whole run wall time, logging on, median", "overhead_logged", ("wall_ms", "median"), "ms")
    n, lat = BATCH_N, int(LATENCY_S * MS)
    row(f"cell with {n}-way batch, {lat} ms model, median", "fanout", ("batch_cell_ms", "median"), "ms")
    row(f"cell with one llm_query, {lat} ms model, median", "fanout", ("single_cell_ms", "median"), "ms")
    row(f"{n}-way batch cell / single-call cell", "fanout", ("ratio",), "x", "<= 2x", lambda o, p: o <= 2.0,
        fmt=lambda v: f"{v:.2f}")
    row(f"one tool call (cell of {TOOL_N} calls minus the inline cell)", "tools", ("per_call_ms",), "ms",
        fmt=lambda v: f"{v:.3f}", comparable=False)
    lat = int(SUB_LATENCY_S * MS)
    row(f"cell of {SUB_N} sub-calls ({SUB_UNIQUE} distinct, {lat} ms model), cache off", "subcalls_cache_off",
        ("cell_ms",), "ms")
    row("  child calls made, cache off", "subcalls_cache_off", ("child_calls",), "", fmt=lambda v: f"{v:.0f}")
    row(f"cell of {SUB_N} sub-calls ({SUB_UNIQUE} distinct, {lat} ms model), cache on", "subcalls_cache_on",
        ("cell_ms",), "ms")
    row("  child calls made, cache on", "subcalls_cache_on", ("child_calls",), "", f"= {SUB_UNIQUE}",
        lambda o, p: o == SUB_UNIQUE, fmt=lambda v: f"{v:.0f}")
    return row.rows


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def main(argv: list[str] | None = None) -> int:
    args = bench_args(__doc__, "fewer repetitions (smoke test)", DEFAULT_OUT, argv)
    cfg = Config.for_mode(args.quick)
    wall0 = time.perf_counter()

    ours_adapter = LoopagentAdapter()
    peer_adapter, peer_reason = make_peer(RlmsAdapter, args.skip_rlms)

    load_start = _loadavg()
    if load_start is not None and load_start > 0.5:
        log(f"note: the machine is busy (1-minute load average {load_start:.2f}); timings will be noisy.")
    context = make_context(cfg.context_kb)
    ours = run_all(ours_adapter, cfg, context)
    peer: dict[str, Any] | None = None
    if peer_adapter is not None:
        try:
            peer = run_all(peer_adapter, cfg, context)
        finally:
            peer_adapter.shutdown()

    iters = lookup(ours, "overhead_logged", "iterations")
    notes = [
        f"trajectory: {int(iters) if iters else '?'} root turns, 11 child calls (3 llm_query + an 8-way batch), "
        f"{cfg.context_kb} KiB context; models answer at once; overhead = (wall - time inside model calls) / turns, "
        f"median of {cfg.overhead_reps} runs after a warm-up run (model time includes loopagent's ScriptedBackend "
        "counting tokens with tiktoken, about 0.1 ms a call).",
        "loopagent runs cells in a confined worker process (started per run: part of setup); rlms' LocalREPL "
        "runs them in-process with exec() and serves llm_query over TCP from an LMHandler thread.",
        "logging on: loopagent log_dir=<tmp> (JSONL trajectory); rlms logger=RLMLogger(log_dir=<tmp>). "
        "Logging off: no log_dir / no logger.",
        f"fan-out: child model sleeps {int(LATENCY_S * MS)} ms per call; loopagent runs up to concurrency=64 calls "
        "at once, rlms' LMHandler up to batch_max_concurrent=16.",
    ]
    notes.append(f"tools: loopagent's tool runs in the parent process, its call crosses from the sandboxed worker "
                 f"(IPC); rlms calls the function inside its in-process REPL, with no isolation (no ratio shown). "
                 f"{SUB_N} sub-calls: one llm_batch / llm_query_batched cell, child answering in "
                 f"{int(SUB_LATENCY_S * MS)} ms; rlms has no sub-call cache (its two rows are the same run).")
    if peer is not None:
        notes.append("rlms' teardown is mostly LMHandler.stop(): socketserver's shutdown() waits for serve_forever's "
                     "0.5 s poll; 'per turn' rows leave setup and teardown out.")
    return finish(
        args,
        benchmark="controller",
        versus="loopagent RLM vs rlms RLM, scripted models",
        rows=build_rows(ours, peer, peer_reason),
        notes=notes,
        packages=["loopagent", "rlms", "RestrictedPython", "pydantic"],
        config={**cfg.__dict__, "batch_n": BATCH_N, "latency_s": LATENCY_S},
        ours=ours,
        peer=peer,
        peer_reason=peer_reason,
        wall0=wall0,
        after={"load_avg_1min": {"start": load_start, "end": _loadavg()}},
    )


if __name__ == "__main__":
    sys.exit(main())
