"""Smoke tests of the benchmarks in bench/: each runs end to end and writes its JSON.

They must pass without rlms installed (CI installs only the test extra): a
script then measures loopagent alone and shows n/a in the rlms columns.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "timeout", "check"),
    [("sandbox", 100, check_sandbox), ("controller", 110, check_controller)],
    ids=["sandbox", "controller"],
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
