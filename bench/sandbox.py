#!/usr/bin/env python
"""Sandbox benchmark: loopagent's SandboxREPL side by side with rlms' LocalREPL.

Run from the repository root (after ``pip install -e '.[bench]'``)::

    python bench/sandbox.py            # full run, 100 MB context, about a minute
    python bench/sandbox.py --quick    # smoke test: small N, 10 MB context
    python bench/sandbox.py --out /tmp/x.json --skip-rlms
    python bench/sandbox.py --ab BASE_DIR   # exec rows only, BASE_DIR's environments/ vs this one

``--ab BASE_DIR`` (BASE_DIR holds another commit's ``environments/``, e.g. from
``git archive BASE environments | tar -x -C BASE_DIR``) runs ``measure_exec`` (below) for
loopagent then rlms in a fresh process, alternating the base code and this tree's
(``--runs`` of each, default 4), and writes the medians and ratios to
bench/results/sandbox_new_code_ab.json (``--out`` to change).

What is measured, for each REPL where it has the operation (one process, one run):

1. cold start: construct + first ``x = 1`` exec, median over N fresh instances;
2. trivial exec round trip: median and p90 of ``x = 1`` (same code every time, which
   loopagent's compiled-cell cache serves) and of ``x = {i}`` (new code every time);
3. host-function IPC: per-call overhead of a host function that returns at once,
   (cell making K calls - same loop without the call) / K. loopagent: a function
   registered with ``register()``, served over the worker's socketpair. rlms:
   ``llm_query()``, which opens a TCP connection to its ``LMHandler`` (started here
   with a mock client that returns at once) -- the only host path rlms has that
   crosses a process/socket boundary; in-process ``custom_tools`` are noted below
   the table for reference;
4. context handoff: ``load_context`` of a 100 MB str, then a cell printing
   ``len(context)`` (both REPLs only show printed output);
5. parent memory growth: RSS (/proc/self/statm) and gc-tracked objects of this
   process before and after N execs of new code, after a warm-up.

Targets: cold start <= 300 ms; trivial exec <= 2 ms median and <= 2x rlms; IPC
<= 1 ms per call; handoff <= 1 s; no parent memory growth per exec. The table is
printed and everything is written as JSON (default bench/results/sandbox.json).
A missed target does not change the exit status (use --strict for that); a
loopagent measurement that fails does.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
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
    machine_info,
    make_peer,
    median,
    rss_bytes,
    rss_of,
    run_steps,
    summarize,
    write_json,
)

DEFAULT_OUT = RESULTS_DIR / "sandbox.json"
RSS_SLACK = 64 * 1024  # page-granular allocator noise tolerated over the whole run
OBJ_SLACK = 256  # one-off objects (caches, interned strings) tolerated over the whole run


@dataclass(frozen=True)
class Config:
    cold_n: int
    exec_n: int
    ipc_k: int
    ipc_reps: int
    mem_n: int
    mem_warmup: int
    context_mb: int
    context_reps: int

    @classmethod
    def for_mode(cls, quick: bool) -> Config:
        if quick:
            return cls(cold_n=3, exec_n=200, ipc_k=20, ipc_reps=3, mem_n=500, mem_warmup=100, context_mb=10,
                       context_reps=1)
        return cls(cold_n=20, exec_n=3000, ipc_k=200, ipc_reps=7, mem_n=5000, mem_warmup=500, context_mb=100,
                   context_reps=5)


# -- adapters: one small interface over both REPLs ---------------------------------------
class Adapter(BaseAdapter):
    def make(self) -> Any:
        raise NotImplementedError

    def start(self, inst: Any) -> None:
        """Start whatever is started lazily (nothing for in-process REPLs)."""

    def run(self, inst: Any, code: str) -> tuple[str, str | None]:
        """Execute a cell; return (stdout, error or None)."""
        raise NotImplementedError

    def make_with_host(self) -> Any:
        """An instance where ``llm_query(prompt)`` is a host function returning "ok" at once."""
        raise NotImplementedError

    def load(self, inst: Any, text: str) -> None:
        inst.load_context(text)

    def close(self, inst: Any) -> None:
        raise NotImplementedError


class LoopagentAdapter(Adapter):
    name = "loopagent"

    def __init__(self) -> None:
        from loopagent.environments import SandboxREPL

        self.cls = SandboxREPL

    def make(self) -> Any:
        return self.cls()

    def start(self, inst: Any) -> None:
        inst.start()

    def run(self, inst: Any, code: str) -> tuple[str, str | None]:
        r = inst.execute(code)
        return r.stdout, r.error

    def make_with_host(self) -> Any:
        inst = self.make()
        inst.register("llm_query", lambda prompt: "ok")
        inst.start()
        return inst

    def close(self, inst: Any) -> None:
        inst.close()


class RlmsAdapter(Adapter):
    name = "rlms"

    def __init__(self) -> None:
        from rlm.clients.base_lm import BaseLM
        from rlm.core.lm_handler import LMHandler
        from rlm.core.types import ModelUsageSummary, UsageSummary
        from rlm.environments.local_repl import LocalREPL

        class InstantLM(BaseLM):
            """A client that answers at once, so only rlms' plumbing is timed."""

            def __init__(self) -> None:
                super().__init__(model_name="instant-mock")

            def completion(self, prompt: Any) -> str:
                return "ok"

            async def acompletion(self, prompt: Any) -> str:
                return "ok"

            def get_usage_summary(self) -> Any:
                return UsageSummary(model_usage_summaries={})

            def get_last_usage(self) -> Any:
                return ModelUsageSummary(total_calls=1, total_input_tokens=0, total_output_tokens=0)

        self.cls = LocalREPL
        self.handler = LMHandler(InstantLM())
        self.address = self.handler.start()

    def make(self) -> Any:
        return self.cls()

    def run(self, inst: Any, code: str) -> tuple[str, str | None]:
        r = inst.execute_code(code)
        return r.stdout, (r.stderr or None)

    def make_with_host(self) -> Any:
        return self.cls(lm_handler_address=self.address)

    def make_with_tool(self) -> Any:
        return self.cls(custom_tools={"tool": lambda prompt: "ok"})

    def close(self, inst: Any) -> None:
        inst.cleanup()

    def shutdown(self) -> None:
        self.handler.stop()


class CellError(RuntimeError):
    pass


def _check(result: tuple[str, str | None], what: str, expect_stdout: str | None = None) -> str:
    out, err = result
    if err:
        raise CellError(f"{what}: the cell failed: {err.strip()[-500:]}")
    if expect_stdout is not None and out != expect_stdout:
        raise CellError(f"{what}: expected stdout {expect_stdout!r}, got {out[:200]!r}")
    return out


# -- measurements ------------------------------------------------------------------------
def measure_cold_start(a: Adapter, n: int) -> dict[str, Any]:
    total, construct, start, first_exec, close = [], [], [], [], []
    for _ in range(n):
        gc.collect()
        t0 = time.perf_counter()
        inst = a.make()
        t1 = time.perf_counter()
        a.start(inst)
        t2 = time.perf_counter()
        res = a.run(inst, "x = 1")
        t3 = time.perf_counter()
        a.close(inst)
        t4 = time.perf_counter()
        _check(res, "cold start")
        total.append(t3 - t0)
        construct.append(t1 - t0)
        start.append(t2 - t1)
        first_exec.append(t3 - t2)
        close.append(t4 - t3)
    return {
        "total_ms": summarize(total, MS),
        "construct_ms": summarize(construct, MS),
        "start_ms": summarize(start, MS),
        "first_exec_ms": summarize(first_exec, MS),
        "close_ms": summarize(close, MS),
        "samples_ms": [t * MS for t in total],
    }


_distinct_counter = 0


def measure_exec(a: Adapter, n: int) -> dict[str, Any]:
    global _distinct_counter
    inst = a.make()
    a.start(inst)
    try:
        for _ in range(50):  # warm-up
            _check(a.run(inst, "x = 1"), "warm-up")
        out: dict[str, Any] = {}
        for label in ("same_code", "distinct_code"):
            times = []
            errors = 0
            gc.collect()
            for _ in range(n):
                if label == "same_code":
                    code = "x = 1"
                else:
                    _distinct_counter += 1
                    code = f"x = {_distinct_counter}"
                t0 = time.perf_counter()
                _, err = a.run(inst, code)
                times.append(time.perf_counter() - t0)
                errors += err is not None
            if errors:
                raise CellError(f"{errors} of {n} trivial execs failed")
            out[f"{label}_ms"] = summarize(times, MS)
        return out
    finally:
        a.close(inst)


def _time_cell(a: Adapter, inst: Any, code: str, what: str) -> float:
    t0 = time.perf_counter()
    res = a.run(inst, code)
    dt = time.perf_counter() - t0
    _check(res, what)
    return dt


def measure_ipc(a: Adapter, k: int, reps: int, make: Callable[[], Any] | None = None,
                fn: str = "llm_query") -> dict[str, Any]:
    inst = (make or a.make_with_host)()
    a.start(inst)
    call_cell = f"for _ in range({k}):\n    r = {fn}('ping')"
    base_cell = f"for _ in range({k}):\n    r = 'ping'"
    try:
        # Warm up and check the host function really answers (rlms returns errors as text).
        _time_cell(a, inst, call_cell, "host-function cell")
        _check(a.run(inst, "print(r)"), "host-function result", expect_stdout="ok\n")
        empty, base, calls = [], [], []
        for _ in range(reps):
            empty.append(_time_cell(a, inst, "pass", "empty cell"))
            base.append(_time_cell(a, inst, base_cell, "loop cell"))
            calls.append(_time_cell(a, inst, call_cell, "host-function cell"))
        per_call = (median(calls) - median(base)) / k
        return {
            "per_call_ms": per_call * MS,
            "k": k,
            "reps": reps,
            "empty_cell_ms": summarize(empty, MS),
            "loop_cell_ms": summarize(base, MS),
            "call_cell_ms": summarize(calls, MS),
        }
    finally:
        a.close(inst)


def measure_memory(a: Adapter, n: int, warmup: int) -> dict[str, Any]:
    inst = a.make()
    a.start(inst)
    worker_pid = getattr(inst, "pid", None)
    try:
        for i in range(warmup):
            _check(a.run(inst, f"y = {i}"), "warm-up")
        # Count objects first: the list gc.get_objects() builds must not land between
        # the two RSS readings (it can move the allocator's high-water mark).
        gc.collect()
        objs0 = len(gc.get_objects())
        gc.collect()
        rss0 = rss_bytes()
        worker0 = rss_of(worker_pid) if worker_pid else None
        checkpoints = [0]
        step = max(1, n // 5)
        errors = 0
        for i in range(n):
            _, err = a.run(inst, f"y = {i}")
            errors += err is not None
            if (i + 1) % step == 0:
                checkpoints.append(rss_bytes() - rss0)
        if errors:
            raise CellError(f"{errors} of {n} execs failed")
        gc.collect()
        rss1 = rss_bytes()
        objs1 = len(gc.get_objects())
        worker1 = rss_of(worker_pid) if worker_pid else None
        return {
            "execs": n,
            "rss_before_bytes": rss0,
            "rss_after_bytes": rss1,
            "rss_delta_bytes": rss1 - rss0,
            "bytes_per_exec": (rss1 - rss0) / n,
            "rss_checkpoints_delta_bytes": checkpoints,
            "gc_objects_delta": objs1 - objs0,
            "gc_objects_per_exec": (objs1 - objs0) / n,
            "worker_rss_delta_bytes": (worker1 - worker0) if worker0 is not None and worker1 is not None else None,
        }
    finally:
        a.close(inst)


def make_context(mb: int) -> str:
    """ASCII prose-like text of exactly ``mb`` MiB (built once, outside any timing)."""
    words = ("the quick brown fox jumps over a lazy dog while seven wizards quietly "
             "judge boxing matches near 42 old river banks; ").split(" ")
    block = "\n".join(" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) for i in range(400)) + "\n"
    size = mb * 1024 * 1024
    return (block * (size // len(block) + 1))[:size]


def measure_handoff(a: Adapter, text: str, reps: int) -> dict[str, Any]:
    load, read, total = [], [], []
    expect = f"{len(text)}\n"
    for _ in range(reps):
        inst = a.make()
        a.start(inst)
        try:
            _check(a.run(inst, "x = 1"), "start")
            gc.collect()
            t0 = time.perf_counter()
            a.load(inst, text)
            t1 = time.perf_counter()
            res = a.run(inst, "print(len(context))")
            t2 = time.perf_counter()
            _check(res, "len(context)", expect_stdout=expect)
        finally:
            a.close(inst)
        gc.collect()
        load.append(t1 - t0)
        read.append(t2 - t1)
        total.append(t2 - t0)
    return {
        "bytes": len(text.encode("utf-8")),
        "total_ms": summarize(total, MS),
        "load_context_ms": summarize(load, MS),
        "first_read_ms": summarize(read, MS),
        "samples_total_ms": [t * MS for t in total],
    }


# -- driver ------------------------------------------------------------------------------
def run_all(a: Adapter, cfg: Config, context: str) -> dict[str, Any]:
    return run_steps(a.name, {
        "cold_start": lambda: measure_cold_start(a, cfg.cold_n),
        "exec": lambda: measure_exec(a, cfg.exec_n),
        "ipc": lambda: measure_ipc(a, cfg.ipc_k, cfg.ipc_reps),
        "memory": lambda: measure_memory(a, cfg.mem_n, cfg.mem_warmup),
        "handoff": lambda: measure_handoff(a, context, cfg.context_reps),
    })


def build_rows(ours: dict[str, Any], peer: dict[str, Any] | None, peer_reason: str, cfg: Config) -> list[Row]:
    row = RowMaker(ours, peer, peer_reason)

    def exec_ok(o: float, p: float | None) -> bool:
        return o <= 2.0 and (p is None or o <= 2.0 * p)

    row("cold start (construct + first exec), median", "cold_start", ("total_ms", "median"), "ms", "<= 300 ms",
        lambda o, p: o <= 300.0)
    row("trivial exec 'x = 1', median", "exec", ("same_code_ms", "median"), "ms", "<= 2 ms and <= 2x rlms", exec_ok)
    row("trivial exec 'x = 1', p90", "exec", ("same_code_ms", "p90"), "ms")
    row("trivial exec 'x = {i}' (new code), median", "exec", ("distinct_code_ms", "median"), "ms",
        "<= 2 ms and <= 2x rlms", exec_ok)
    row("trivial exec 'x = {i}' (new code), p90", "exec", ("distinct_code_ms", "p90"), "ms")
    row("host-function IPC, per call", "ipc", ("per_call_ms",), "ms", "<= 1 ms", lambda o, p: o <= 1.0)
    mb = cfg.context_mb
    row(f"{mb} MB context: load_context + len(context)", "handoff", ("total_ms", "median"), "ms", "<= 1000 ms",
        lambda o, p: o <= 1000.0)
    row(f"{mb} MB context: load + len, slowest of {cfg.context_reps}", "handoff", ("total_ms", "max"), "ms")
    row(f"{mb} MB context: load_context alone", "handoff", ("load_context_ms", "median"), "ms")
    row(f"{mb} MB context: first read cell", "handoff", ("first_read_ms", "median"), "ms")
    n = cfg.mem_n
    slack_per_exec = RSS_SLACK / n
    row(f"parent RSS growth per exec (over {n} execs)", "memory", ("bytes_per_exec",), "B/exec",
        f"~0 (<= {slack_per_exec:.0f} B/exec)", lambda o, p: o <= slack_per_exec, fmt=lambda v: f"{v:.2f}",
        comparable=False)
    obj_slack = OBJ_SLACK / n
    row("parent gc objects per exec", "memory", ("gc_objects_per_exec",), "obj/exec", f"~0 (<= {obj_slack:.2g}/exec)",
        lambda o, p: o <= obj_slack, fmt=lambda v: f"{v:.3f}", comparable=False)
    return row.rows


# -- A/B of the exec rows against another commit ------------------------------------------
AB_OUT = RESULTS_DIR / "sandbox_new_code_ab.json"


def _use_environments_from(env_dir: Path) -> None:
    """Import ``loopagent.environments`` from ``env_dir`` (the rest of loopagent from here)."""
    init = env_dir / "__init__.py"
    if not init.is_file():
        raise SystemExit(f"{env_dir} holds no environments package (no __init__.py)")

    class Finder:
        @staticmethod
        def find_spec(name: str, path: Any = None, target: Any = None) -> Any:
            if name != "loopagent.environments":
                return None
            return importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(env_dir)])

    sys.meta_path.insert(0, Finder)


def exec_run(n: int) -> dict[str, float]:
    """measure_exec for loopagent then rlms in this process: the medians (ms) and ratios."""
    ours = measure_exec(LoopagentAdapter(), n)
    peer = RlmsAdapter()
    try:
        theirs = measure_exec(peer, n)
    finally:
        peer.shutdown()
    row = {
        "ours_same": ours["same_code_ms"]["median"],
        "ours_dist": ours["distinct_code_ms"]["median"],
        "rlms_same": theirs["same_code_ms"]["median"],
        "rlms_dist": theirs["distinct_code_ms"]["median"],
    }
    row["ratio_dist"] = row["ours_dist"] / row["rlms_dist"]
    row["ratio_same"] = row["ours_same"] / row["rlms_same"]
    return row


def _environments_dir() -> str:
    import loopagent.environments

    return str(Path(loopagent.environments.__file__).parent)


def main_ab(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description="exec rows: another commit's environments/ vs this tree's, alternated")
    ap.add_argument("--ab", type=Path, required=True, metavar="BASE_DIR",
                    help="a folder holding the base commit's environments/")
    ap.add_argument("--runs", type=int, default=4, help="runs of each (default 4)")
    ap.add_argument("--n", type=int, default=3000, help="cells per row and run (default 3000)")
    ap.add_argument("--base-name", default="base", help="what to call the base in the JSON (a commit)")
    ap.add_argument("--out", type=Path, default=AB_OUT, help=f"JSON output path (default {AB_OUT})")
    args = ap.parse_args(argv)
    base = (args.ab / "environments").resolve()
    runs: list[dict[str, Any]] = []
    for _ in range(args.runs):
        for code in ("before", "after"):
            env = ["--env", str(base)] if code == "before" else []
            cmd = [sys.executable, __file__, "--exec-run", str(args.n), *env]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent)
            row = {"code": code, **json.loads(done.stdout.strip().splitlines()[-1])}
            print(json.dumps(row))
            runs.append(row)
    keys: tuple[str, ...] = ("ours_same", "ours_dist", "rlms_same", "rlms_dist", "ratio_dist", "ratio_same")
    medians = {code: {k: statistics.median(r[k] for r in runs if r["code"] == code) for k in keys}
               for code in ("before", "after")}
    data = {
        "benchmark": "sandbox exec rows, base commit vs this tree, alternated",
        "how": (f"python bench/sandbox.py --ab BASE_DIR --runs {args.runs} --n {args.n}: measure_exec(n={args.n}) "
                f"for loopagent then rlms, one process per run; {args.runs} runs of the base "
                f"{args.base_name} (before) alternated with {args.runs} of this tree (after); times are medians in ms"),
        "machine": machine_info(["loopagent", "rlms", "RestrictedPython"]),
        "runs": runs,
        "median_of_runs": medians,
    }
    path = write_json(args.out, data)
    for code in ("before", "after"):
        m = medians[code]
        print(f"{code}: new code {m['ours_dist'] * 1e3:.1f} us vs rlms {m['rlms_dist'] * 1e3:.1f} us "
              f"({m['ratio_dist']:.2f}x); same code {m['ratio_same']:.2f}x")
    print(f"results: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--exec-run"]:  # one run of main_ab's, in a process of its own
        if "--env" in argv:
            _use_environments_from(Path(argv[argv.index("--env") + 1]))
        print(json.dumps({**exec_run(int(argv[1])), "environments": _environments_dir()}))
        return 0
    if "--ab" in argv:
        return main_ab(argv)
    args = bench_args(__doc__, "small N and a 10 MB context (smoke test)", DEFAULT_OUT, argv)
    cfg = Config.for_mode(args.quick)
    wall0 = time.perf_counter()

    ours_adapter = LoopagentAdapter()
    peer_adapter, peer_reason = make_peer(RlmsAdapter, args.skip_rlms)

    context = make_context(cfg.context_mb)
    ours = run_all(ours_adapter, cfg, context)
    with ours_adapter.make() as probe:  # which OS layers applied to the worker (affects timings)
        isolation = dict(probe.isolation)
    peer: dict[str, Any] | None = None
    extra: dict[str, Any] = {}
    if peer_adapter is not None:
        try:
            peer = run_all(peer_adapter, cfg, context)
            try:  # for reference: rlms' in-process custom tool (no IPC at all)
                extra["rlms_custom_tool_call"] = measure_ipc(
                    peer_adapter, cfg.ipc_k, cfg.ipc_reps, make=peer_adapter.make_with_tool, fn="tool"
                )
            except Exception as e:
                extra["rlms_custom_tool_call"] = {"error": f"{type(e).__name__}: {e}"}
        finally:
            peer_adapter.shutdown()
    del context

    tool = extra.get("rlms_custom_tool_call", {})
    notes = [
        "rlms LocalREPL runs code in-process with exec(); loopagent runs it in a confined worker process "
        f"(isolation: {', '.join(k for k, v in isolation.items() if v) or 'none'}).",
        "host-function IPC: loopagent = registered function over the worker socketpair; rlms = llm_query() "
        "over a new TCP connection per call to LMHandler with an instant mock client.",
    ]
    if "per_call_ms" in tool:
        notes.append(f"for reference, an rlms in-process custom_tools call costs "
                     f"{tool['per_call_ms'] * 1e3:.2f} us (no IPC).")
    return finish(
        args,
        benchmark="sandbox",
        versus="loopagent SandboxREPL vs rlms LocalREPL",
        rows=build_rows(ours, peer, peer_reason, cfg),
        notes=notes,
        packages=["loopagent", "rlms", "RestrictedPython"],
        config=cfg.__dict__,
        ours=ours,
        peer=peer,
        peer_reason=peer_reason,
        wall0=wall0,
        before={"loopagent_isolation": isolation},
        after={"extra": extra},
    )


if __name__ == "__main__":
    sys.exit(main())
