"""Smoke test of the controller benchmark: it runs end to end and writes its JSON.

It must pass without rlms installed (CI installs only the test extra): the
script then measures loopagent alone and shows n/a in the rlms columns.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_controller_bench_quick(tmp_path: Path) -> None:
    out = tmp_path / "c.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "controller.py"), "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert str(out) in proc.stdout
    data = json.loads(out.read_text())
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
    assert data["machine"]["cpu_count"] >= 1
    metrics = {row["metric"]: row for row in data["rows"]}
    assert metrics["overhead per iteration, logging on, median"]["ours"] > 0
    assert metrics["64-way batch cell / single-call cell"]["ours"] > 0
    if data["rlms"] is None:  # rlms not installed: its columns are n/a, not an error
        assert data["rlms_unavailable"]
        assert all(row["peer"] is None for row in data["rows"])
