"""`loopagent train`: a few steps end to end, resume after a stop, determinism."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from loopagent import model  # noqa: E402
from loopagent.training.trainer import preset, train  # noqa: E402


def _log(path):
    return [json.loads(line) for line in (path / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_tiny_child_trains_resumes_and_serves(tmp_path):
    full = train(preset("tiny-child"), tmp_path / "full", progress=False)
    assert full.steps == 12 and (tmp_path / "full" / "model" / "model.safetensors").is_file()
    assert {"hops1", "hops4"} <= set(full.evaluation)

    # stop after 8 steps, then resume to 12: same log, same weights as the straight run
    train(preset("tiny-child", steps=8), tmp_path / "split", progress=False)
    assert [r["step"] for r in _log(tmp_path / "split")] == list(range(1, 9))
    train(preset("tiny-child", steps=12), tmp_path / "split", progress=False)
    steps = [r["step"] for r in _log(tmp_path / "split")]
    assert steps == list(range(1, 13))
    a = torch.load(tmp_path / "full" / "train_state.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "split" / "train_state.pt", weights_only=False)["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert [r["loss"] for r in _log(tmp_path / "full")] == pytest.approx([r["loss"] for r in _log(tmp_path / "split")],
                                                                         abs=1e-4)

    # the exported checkpoint is a plain looped model the hf: backend serves
    backend = model(f"hf:{tmp_path / 'full' / 'model'}", loops=2, max_new_tokens=2)
    out = backend.complete([{"role": "user", "content": "a=b; b=3 ?a"}])
    assert out.loops.requested == 2 and out.usage.prompt_tokens == 6  # "a=b", ";", " ", "b=3", " ", "?a"
    # each stretch of the run records where it trained
    starts = [json.loads(line) for line in (tmp_path / "split" / "train_runs.jsonl").read_text().splitlines()]
    assert [r["from_step"] for r in starts] == [0, 8] and starts[0]["device"] == "cpu"


@pytest.mark.slow
def test_batches_from_worker_processes_are_the_same_batches(tmp_path):
    here = train(preset("tiny-child", steps=4), tmp_path / "here", progress=False)
    pooled = train(preset("tiny-child", steps=4), tmp_path / "pooled", progress=False, workers=2)
    assert [r["loss"] for r in _log(tmp_path / "here")] == [r["loss"] for r in _log(tmp_path / "pooled")]
    assert here.final_loss == pooled.final_loss


@pytest.mark.slow
def test_tiny_root_trains(tmp_path):
    result = train(preset("tiny-root"), tmp_path, progress=False)
    assert {"program_exact", "program_exact_heldout"} <= set(result.evaluation)
    assert (tmp_path / "model" / "tokenizer.json").is_file()


def test_a_run_directory_with_another_configuration_is_refused(tmp_path):
    (tmp_path / "train_config.json").write_text(preset("tiny-child", seed=1).model_dump_json())
    with pytest.raises(ValueError, match="another configuration"):
        train(preset("tiny-child", seed=2), tmp_path, progress=False)


@pytest.mark.slow
def test_a_child_trains_on_fact_sentences_and_is_evaluated_on_held_out_templates(tmp_path):
    from loopagent.training.trainer import evaluate_child, make_batch, make_tokenizer

    config = preset("tiny-child", steps=4, fact_sentences=0.5)
    tok = make_tokenizer("child")
    texts = [tok.decode(row) for row in make_batch(config, tok, 0)["input_ids"]]
    assert any(". " in t for t in texts) and any("; " in t for t in texts)  # both forms in one batch
    assert not any(". " in tok.decode(row) for row in make_batch(preset("tiny-child"), tok, 0)["input_ids"])
    result = train(config, tmp_path, progress=False)
    served = model(f"hf:{tmp_path / 'model'}", loops=2, max_new_tokens=2)
    acc = evaluate_child(served.model, served.tokenizer, items=8, seed=1, loops=[1, 2], hops=[1, 2],
                         facts="heldout_sentences")
    assert set(acc) == {"hops1", "hops2"} and all(0.0 <= v <= 1.0 for row in acc.values() for v in row.values())
    assert result.steps == 4
