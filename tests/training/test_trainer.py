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


@pytest.mark.slow
@pytest.mark.parametrize("role", ["root", "child"])
def test_a_fine_tune_starts_from_the_exported_model(tmp_path, role):
    from loopagent.backends.looped import LoopedForCausalLM
    from loopagent.training.trainer import load_initial, make_model, make_tokenizer, run_summary

    train(preset(f"tiny-{role}", steps=2), tmp_path / "base", progress=False)
    exported = tmp_path / "base" / "model"
    config = preset(f"tiny-{role}", steps=2, seed=5, init_from=str(exported))
    tok = make_tokenizer(role)
    start = make_model(config, tok)
    load_initial(start, exported)
    ids = torch.randint(0, 120, (2, 12))
    reference = LoopedForCausalLM.from_pretrained(exported)
    # the same function as the exported model (a child's factored embedding starts with zero parts)
    assert torch.allclose(start(ids, loops=2).logits, reference(ids, loops=2).logits, atol=1e-5)
    assert not torch.allclose(make_model(config, tok)(ids, loops=2).logits, reference(ids, loops=2).logits, atol=1e-3)

    tuned = train(config, tmp_path / "tune", progress=False)
    summary = run_summary(tmp_path / "tune")
    assert summary["init"]["steps"] == 2 and summary["config"]["init_from"] == str(exported)
    assert json.loads((tuned.out / "model" / "training.json").read_text())["init"]["config"]["seed"] == 0


def test_a_fine_tune_needs_a_matching_model_to_start_from(tmp_path):
    from loopagent.errors import ConfigError
    from loopagent.training.trainer import load_initial, make_model, make_tokenizer

    with pytest.raises(ConfigError, match="--init-from"):
        preset("root-tune")
    tok = make_tokenizer("root")
    small = make_model(preset("tiny-root"), tok)
    with pytest.raises(ConfigError, match="holds no exported model"):
        load_initial(small, tmp_path)
    # the shipped root is hidden 128: a tiny root (hidden 32) cannot start from it
    from loopagent.backends.embedded import WEIGHTS

    with pytest.raises(ConfigError, match="another architecture"):
        load_initial(small, WEIGHTS / "root")


def test_the_cli_fine_tune_asks_for_the_model_to_start_from(tmp_path):
    from typer.testing import CliRunner

    from loopagent.cli import app

    result = CliRunner().invoke(app, ["train", "root", "--preset", "root-tune", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "--init-from" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["train", "root", "--preset", "root-tune", "--out", str(tmp_path / "run"),
                                      "--init-from", str(tmp_path)])
    assert result.exit_code == 2 and "holds no exported model" in " ".join(result.output.split())
    assert not (tmp_path / "run" / "train_config.json").exists()  # so the corrected command is not refused
