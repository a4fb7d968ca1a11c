"""Smoke tests of the benchmarks in bench/: each runs end to end and writes its JSON.

They must pass without rlms installed (CI installs only the test extra): a
script then measures loopagent alone and shows n/a in the rlms columns. The
looped benchmark needs torch and transformers (the looped extra); without them
it is skipped.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
HAS_TORCH = all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers"))


def check_sandbox(data: dict[str, Any]) -> None:
    ours = data["loopagent"]
    assert ours["cold_start"]["total_ms"]["median"] > 0
    assert ours["exec"]["same_code_ms"]["median"] > 0
    assert ours["exec"]["distinct_code_ms"]["p90"] > 0
    assert ours["ipc"]["per_call_ms"] is not None
    assert ours["handoff"]["bytes"] == 10 * 1024 * 1024
    assert ours["handoff"]["total_ms"]["median"] > 0
    assert isinstance(ours["memory"]["bytes_per_exec"], float)
    assert any(row["metric"].startswith("cold start") and row["ours"] for row in data["rows"])


def check_controller(data: dict[str, Any]) -> None:
    ours = data["loopagent"]
    for key in ("overhead_logged", "overhead_unlogged"):
        entry = ours[key]
        assert "error" not in entry, entry.get("traceback")
        assert entry["iterations"] == 10
        assert entry["sub_calls"] == 11
        assert entry["overhead_per_iter_ms"]["median"] > 0
        assert entry["wall_ms"]["median"] >= entry["model_ms"]["median"] >= 0
    fanout = ours["fanout"]
    assert "error" not in fanout, fanout.get("traceback")
    assert fanout["n"] == 64
    assert fanout["single_cell_ms"]["median"] >= 50  # the child model sleeps 50 ms
    assert fanout["batch_cell_ms"]["median"] >= 50
    assert fanout["ratio"] > 0
    metrics = {row["metric"]: row for row in data["rows"]}
    assert metrics["overhead per iteration, logging on, median"]["ours"] > 0
    assert metrics["64-way batch cell / single-call cell"]["ours"] > 0
    if data["rlms"] is None:  # rlms not installed: its columns are n/a, not an error
        assert data["rlms_unavailable"]
        assert all(row["peer"] is None for row in data["rows"])


def check_looped(data: dict[str, Any]) -> None:
    loops = data["config"]["loops"]
    assert loops == [1, 2, 4]
    assert data["machine"]["torch_threads"] >= 1
    for mode in ("per_loop", "shared"):
        res = data["loopagent"][mode]
        assert "error" not in res, res.get("traceback")
        for L in loops:
            entry = res["loops"][str(L)]
            assert entry["prefill"]["tokens_per_s"] > 0
            assert entry["decode"]["tokens_per_s"] > 0
            assert entry["kv"]["nbytes"] == entry["kv"]["expected_nbytes"] > 0
        assert res["generate_check"]["matches"]
        fits = data["fits"][mode]
        for phase in ("prefill", "decode", "kv_bytes"):
            fit = fits[phase]
            assert {"a", "b", "r2", "ratio_last_over_first", "target", "passed"} <= fit.keys()
            assert fit["r2"] <= 1.0 + 1e-9
            assert isinstance(fit["passed"], bool)
    # Memory is exact, not timed: per-loop KV grows with loops, shared KV stays flat.
    assert data["fits"]["per_loop"]["kv_bytes"]["passed"]
    assert data["fits"]["per_loop"]["kv_bytes"]["b"] > 0
    assert data["fits"]["shared"]["kv_bytes"]["passed"]
    assert data["fits"]["shared"]["kv_bytes"]["b"] == 0
    assert {(t["cache"], t["metric"]) for t in data["targets"]} >= {("per_loop", "prefill"), ("shared", "kv_bytes")}


def check_kernels(data: dict[str, Any]) -> None:
    assert data["note"].startswith("CPU smoke run")  # no GPU: no speed targets judged
    assert data["targets"] == []
    kernels = {k["kernel"] for k in data["kernels"]}
    assert kernels >= {"rms_norm", "add_rms_norm", "inject_rms_norm (stable)", "silu_mul", "halt_step"}
    assert all("error" not in k and k["fused_us"] > 0 and k["eager_us"] > 0 for k in data["kernels"])
    assert all("error" not in c and c["speedup_vs_eager"] > 0 for c in data["chain"])
    runs = data["decode"]["runs"]
    assert {r["variant"] for r in runs} == {"eager", "kernels", "graphs"}
    # the kernels and the static (graph) step decode the same greedy tokens as eager
    assert all("error" not in r and r["tokens_match_eager"] and r["tokens_per_s"] > 0 for r in runs)


HAS_TRITON = importlib.util.find_spec("triton") is not None


@pytest.mark.slow
@pytest.mark.timeout(360)  # above every subprocess timeout below, so those name the script that hung
@pytest.mark.parametrize(
    ("script", "timeout", "check"),
    [
        ("sandbox", 100, check_sandbox),
        ("controller", 110, check_controller),
        # a hang guard, not a speed check: a loaded machine stretches the quick run
        pytest.param("looped", 300, check_looped, marks=pytest.mark.skipif(
            not HAS_TORCH, reason="needs the looped extra (torch, transformers)")),
        pytest.param("kernels", 200, check_kernels, marks=pytest.mark.skipif(
            not (HAS_TORCH and HAS_TRITON), reason="needs the looped and kernels extras (torch, Triton)")),
    ],
    ids=["sandbox", "controller", "looped", "kernels"],
)
def test_bench_quick(tmp_path: Path, script: str, timeout: int, check: Callable[[dict[str, Any]], None]) -> None:
    out = tmp_path / f"{script}.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{script}.py"), "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert str(out) in proc.stdout
    data = json.loads(out.read_text())
    assert data["machine"]["cpu_count"] >= 1
    check(data)
