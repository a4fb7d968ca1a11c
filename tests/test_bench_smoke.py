"""Smoke test of the sandbox benchmark: it runs end to end and writes its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_sandbox_bench_quick(tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sandbox.py"), "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert str(out) in proc.stdout
    data = json.loads(out.read_text())
    ours = data["loopagent"]
    assert ours["cold_start"]["total_ms"]["median"] > 0
    assert ours["exec"]["same_code_ms"]["median"] > 0
    assert ours["exec"]["distinct_code_ms"]["p90"] > 0
    assert ours["ipc"]["per_call_ms"] is not None
    assert ours["handoff"]["bytes"] == 10 * 1024 * 1024
    assert ours["handoff"]["total_ms"]["median"] > 0
    assert isinstance(ours["memory"]["bytes_per_exec"], float)
    assert data["machine"]["cpu_count"] >= 1
    assert any(row["metric"].startswith("cold start") and row["ours"] for row in data["rows"])
