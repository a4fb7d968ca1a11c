"""The model card: rendered from the training runs and the quality measurements."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from loopagent.training.card import render  # noqa: E402
from loopagent.training.trainer import preset, train  # noqa: E402


@pytest.mark.slow
def test_model_card_reads_the_runs_and_the_measurements(tmp_path):
    train(preset("tiny-root", steps=2), tmp_path / "root", progress=False)
    train(preset("tiny-child", steps=2), tmp_path / "child", progress=False)
    quality = {
        "child_alone": {f"hops{h}": {f"L{n}": float(n >= h) for n in (1, 4, 12)} for h in (1, 4)},
        "needle_1m": {"rlm": 1.0}, "chains_4hop_200k": {"rlm": 1.0}, "root_programs": {"cells": 10, "ok_rate": 0.9},
    }
    card = render(tmp_path / "root", tmp_path / "child", quality)
    names = [json.loads((tmp_path / r / "train_runs.jsonl").read_text())["device_name"] for r in ("root", "child")]
    assert f"| hardware | {names[0]} | {names[1]} |" in card and "CPU" in names[0]
    assert "latent-step supervision at every depth 1-4" in card  # tiny-child trains loops 1-4
    assert "| 4 | 0.00 | 1.00 | 1.00 |" in card
    assert "lowest accuracy over all chain lengths is 1.00 at 12 loops" in card
    assert "90% of 10 REPL cells" in card
