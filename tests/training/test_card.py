"""The model card: rendered from the training runs and the quality measurements."""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("torch")

from loopagent.errors import ConfigError  # noqa: E402
from loopagent.training.card import render  # noqa: E402
from loopagent.training.trainer import preset, train  # noqa: E402


@pytest.mark.slow
def test_model_card_reads_the_runs_and_the_measurements(tmp_path):
    train(preset("tiny-root", steps=2), tmp_path / "root", progress=False)
    train(preset("tiny-child", steps=2), tmp_path / "child", progress=False)
    quality = {
        "child_alone": {f"hops{h}": {f"L{n}": float(n >= h) for n in (1, 4, 12)} for h in (1, 4)},
        "needle_1m": {"rlm": 1.0}, "value_heldout_phrasings": {"rlm": 0.85}, "chains_4hop_200k": {"rlm": 1.0},
        "root_cells": {"cells": 10, "ok_rate": 0.9, "syntax_error_rate": 0.1},
        "root_cells_foreign": {"cells": 4, "ok_rate": 1.0, "syntax_error_rate": 0.0},
        "child_fact_sentences": {"sentences": {"L1": 0.0, "L8": 0.25}, "heldout_sentences": {"L1": 0.0, "L8": 0.125}},
    }
    card = render(tmp_path / "root", tmp_path / "child", quality)
    names = [json.loads((tmp_path / r / "train_runs.jsonl").read_text())["device_name"] for r in ("root", "child")]
    assert f"| hardware | {names[0]} | {names[1]} |" in card and "CPU" in names[0]
    assert "latent-step supervision at every depth 1-4" in card  # tiny-child trains loops 1-4
    assert "| 4 | 0.00 | 1.00 | 1.00 |" in card
    assert "lowest accuracy over all chain lengths is 1.00 at 12 loops" in card
    assert "90% of 10 ran without error, 10.0% had a syntax error" in card
    # training distribution and held-out apart, each run with what it holds out
    assert "| `needle_1m` | held-out key vocabulary, RULER's question | 1.00 |" in card
    assert "| `value_heldout_phrasings` | held-out phrasings, mixed case (child 8 loops) | 0.85 |" in card
    assert "needle_1m_training_style" not in card  # not measured: no row
    assert "4 cells, 0.0% with a syntax error" in card
    assert ("fact sentences (training templates: 0.00 at 1 loop, 0.25 at 8; held-out templates: 0.00 at 1 loop, "
            "0.12 at 8)") in card
    # an exported model carries its run's summary: the card renders the same from the shipped folder alone
    assert render(tmp_path / "root", tmp_path / "child" / "model", quality) == card
    with pytest.raises(ConfigError, match="neither a training run"):
        render(tmp_path / "root", tmp_path, quality)


@pytest.mark.slow
def test_model_card_shows_both_stages_of_a_fine_tune(tmp_path):
    train(preset("tiny-root", steps=2), tmp_path / "root", progress=False)
    train(preset("tiny-root", steps=3, seed=4, init_from=str(tmp_path / "root" / "model")), tmp_path / "tune",
          progress=False)
    train(preset("tiny-child", steps=2), tmp_path / "child", progress=False)
    quality = {"child_alone": {"hops1": {"L1": 1.0}}}
    card = render(tmp_path / "tune", tmp_path / "child", quality)
    assert re.search(r"\| training \| 2 steps, batch 4, \d+ s, then a fine-tune of 3 steps, batch 4, \d+ s \| 2 steps",
                     card)
    assert "--preset root-tune --init-from" in card
    assert "root-tune" not in render(tmp_path / "root", tmp_path / "child", quality)
