"""Training the embedded models: ``loopagent train child|root --out DIR``.

Resumable (a checkpoint every ``checkpoint_every`` steps; rerun the same command
to continue), deterministic by seed (each batch is generated from ``seed`` and
its step number, so a resumed run sees the same data), with a progress bar and an
append-only ``train_log.jsonl``. The result is a plain :class:`LoopedForCausalLM`
checkpoint with its tokenizer under ``DIR/model`` that the ``hf:`` backend (and
later vLLM) serves.

The child reads one statement per token: its embedding of ``"q=a"`` is trained as
the sum of a left-name, a right-value and a query-name embedding (plus a free
per-token part), then exported as an ordinary embedding table.
"""

from __future__ import annotations

import copy
import json
import math
import multiprocessing
import os
import platform
import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from loopagent.backends.looped import LoopedConfig, LoopedForCausalLM
from loopagent.backends.looped.tokenizer import byte_tokenizer
from loopagent.backends.looped.training import LoopSampler, train_step
from loopagent.errors import ConfigError
from loopagent.evals.chains import DIGITS, NAMES, make_section

from .data import (
    CHILD_CHAT_TEMPLATE,
    CHILD_EXTRA_TOKENS,
    ROOT_CHAT_TEMPLATE,
    child_example,
    child_prompt,
    collate,
    random_root_question,
    root_example,
)

Role = Literal["child", "root"]


class TrainConfig(BaseModel):
    """Everything a training run depends on (saved next to the checkpoint)."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    steps: int = Field(gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(3e-3, gt=0)
    warmup: int = Field(100, ge=0)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    loops_min: int = Field(1, ge=1)
    loops_max: int = Field(8, ge=1)
    hidden_size: int = 64
    num_attention_heads: int = 4
    intermediate_size: int = 256
    num_prelude_layers: int = 1
    num_core_layers: int = 1
    num_coda_layers: int = 1
    injection: str = "concat"
    default_loops: int = 4
    max_loops: int = 16
    objective: Literal["final", "stepwise"] = "final"
    statements: list[int] = Field(default_factory=lambda: [8])
    train_hops: list[int] = Field(default_factory=lambda: [1, 2, 3, 4])
    queries: int = Field(4, gt=0)
    #: child: share of sections written as English fact sentences (training templates)
    fact_sentences: float = Field(0.0, ge=0.0, le=1.0)
    #: an exported model (``DIR/model`` of a run, or a ``weights/<role>`` folder) to start from
    #: instead of fresh weights: a fine-tune (the architecture fields must match it)
    init_from: str | None = None
    checkpoint_every: int = Field(100, gt=0)
    eval_every: int = Field(250, gt=0)
    eval_items: int = Field(256, gt=0)

    @field_validator("statements", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) else value


PRESETS: dict[str, dict[str, Any]] = {
    # stepwise: the state after k loops is trained to hold the chain after k lookups
    "child": dict(role="child", steps=2000, batch_size=512, lr=2e-3, warmup=200, hidden_size=128,
                  intermediate_size=512, injection="concat", objective="stepwise", default_loops=8, max_loops=16,
                  loops_min=1, loops_max=8, statements=[5, 6, 7, 8, 9, 10], train_hops=[1, 2, 3, 4, 5, 6], queries=4,
                  eval_every=500, checkpoint_every=250),
    # the child that also reads English fact sentences (bytes: a section is ~5x longer); a GPU run
    "child-facts": dict(role="child", steps=3000, batch_size=512, lr=2e-3, warmup=200, hidden_size=128,
                        intermediate_size=512, num_prelude_layers=2, injection="concat", objective="stepwise",
                        default_loops=8, max_loops=16, loops_min=1, loops_max=8, statements=[5, 6, 7, 8, 9, 10],
                        train_hops=[1, 2, 3, 4, 5, 6], queries=4, fact_sentences=0.5, eval_every=500,
                        checkpoint_every=250),
    "root": dict(role="root", steps=4600, batch_size=32, lr=2e-3, hidden_size=128, intermediate_size=384,
                 injection="additive", default_loops=2, max_loops=8, loops_min=1, loops_max=3, eval_items=32,
                 eval_every=500),
    # a fine-tune of a trained root (``--init-from``) on the current data: fewer steps at a lower rate
    "root-tune": dict(role="root", steps=1500, batch_size=32, lr=5e-4, warmup=50, seed=1, hidden_size=128,
                      intermediate_size=384, injection="additive", default_loops=2, max_loops=8, loops_min=1,
                      loops_max=3, eval_items=32, eval_every=500),
    # a few seconds on a laptop: for tests and smoke runs
    "tiny-child": dict(role="child", steps=12, batch_size=8, hidden_size=32, intermediate_size=64, loops_max=4,
                       objective="stepwise", checkpoint_every=4, eval_every=12, eval_items=16),
    "tiny-root": dict(role="root", steps=6, batch_size=4, hidden_size=32, intermediate_size=64,
                      default_loops=2, max_loops=4, loops_max=2, checkpoint_every=3, eval_every=6, eval_items=2),
}


#: Presets that continue a trained model (``init_from``) rather than start from fresh weights.
FINE_TUNES = frozenset({"root-tune"})


def preset(name: str, **overrides: Any) -> TrainConfig:
    """A named configuration with ``overrides`` (None values keep the preset's)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    try:
        config = TrainConfig(**{**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}})
    except ValidationError as e:
        raise ConfigError(f"preset {name!r}: {e}") from None
    if name in FINE_TUNES and config.init_from is None:
        raise ConfigError(f"preset {name!r} fine-tunes a trained model: pass init_from (--init-from DIR/model, "
                          "e.g. the model of `loopagent train root`)")
    return config


# -- model and data --------------------------------------------------------------------------------


@lru_cache(maxsize=2)
def make_tokenizer(role: Role) -> Any:
    """The byte tokenizer of a role; the child's adds one token per statement and query."""
    if role == "child":
        return byte_tokenizer(CHILD_EXTRA_TOKENS, chat_template=CHILD_CHAT_TEMPLATE)
    return byte_tokenizer(chat_template=ROOT_CHAT_TEMPLATE)


def make_model(config: TrainConfig, tok: Any) -> Any:
    """A freshly initialized model for ``config`` (the child with a :class:`FactoredEmbedding`)."""
    torch.manual_seed(config.seed)
    model_config = LoopedConfig(
        vocab_size=len(tok), hidden_size=config.hidden_size, num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size, num_prelude_layers=config.num_prelude_layers,
        num_core_layers=config.num_core_layers, num_coda_layers=config.num_coda_layers, injection=config.injection,
        default_loops=config.default_loops, max_loops=config.max_loops, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, max_position_embeddings=2048,
    )
    model = LoopedForCausalLM(model_config)
    if config.role == "child":
        model.model.embed_tokens = FactoredEmbedding.for_child(model.model.embed_tokens, tok)
    return model


def load_initial(model: Any, path: Path) -> None:
    """Start ``model`` (from :func:`make_model`) from the exported model at ``path``.

    A child's factored embedding starts as the exported table with zero parts, the same function.

    Example::

        load_initial(model, Path("runs/embedded-root/model"))
    """
    if not (path / "config.json").is_file():
        raise ConfigError(f"init_from: {path} holds no exported model (config.json); pass a run's DIR/model "
                          "or a weights/<role> folder")
    source = LoopedForCausalLM.from_pretrained(path).state_dict()
    target = model.state_dict()
    embedding = model.model.embed_tokens
    if isinstance(embedding, FactoredEmbedding):
        source = {("model.embed_tokens.base.weight" if k == "model.embed_tokens.weight" else k): v
                  for k, v in source.items()}
        source.update({k: torch.zeros_like(v) for k, v in target.items() if k.startswith("model.embed_tokens.tables.")})
    mismatched = sorted(k for k in target.keys() | source.keys()
                        if k not in source or k not in target or source[k].shape != target[k].shape)
    if mismatched:
        raise ConfigError(f"init_from: {path} has another architecture than this configuration "
                          f"(differs in {', '.join(mismatched[:4])}); match its hidden size, layers and role")
    model.load_state_dict(source)


class FactoredEmbedding(nn.Module):
    """Embedding of a composite token = its own row + the rows of its parts.

    ``parts[i]`` holds token ``i``'s left name, right value and query name (-1: none), so
    ``"q=a"`` shares its left-name row with every ``"q=..."``. Training uses it; the export
    folds it into an ordinary table (:func:`plain_model`). Its parameters are ``base.weight``
    and ``tables.{0,1,2}.weight``: the names the training checkpoints hold.
    """

    def __init__(self, base: nn.Embedding, parts: torch.Tensor, sizes: list[int]) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("parts", parts, persistent=False)
        self.tables = nn.ModuleList(nn.Embedding(n, base.embedding_dim) for n in sizes)
        for table in self.tables:
            nn.init.normal_(table.weight, std=0.02)
        with torch.no_grad():
            self.base.weight[(parts >= 0).any(-1)] = 0.0

    @classmethod
    def for_child(cls, base: nn.Embedding, tok: Any) -> FactoredEmbedding:
        """Factor the child's statement tokens ``x=y`` and query tokens ``?x``."""
        values = NAMES + DIGITS
        parts = torch.full((base.num_embeddings, 3), -1, dtype=torch.long)
        for token, index in tok.get_vocab().items():
            if len(token) == 3 and token[1] == "=" and token[0] in NAMES and token[2] in values:
                parts[index, 0], parts[index, 1] = NAMES.index(token[0]), values.index(token[2])
            elif len(token) == 2 and token[0] == "?" and token[1] in NAMES:
                parts[index, 2] = NAMES.index(token[1])
        return cls(base, parts, [len(NAMES), len(values), len(NAMES)])

    @property
    def weight(self) -> torch.Tensor:
        return self.materialize()

    @property
    def num_embeddings(self) -> int:
        return self.base.num_embeddings

    @property
    def embedding_dim(self) -> int:
        return self.base.embedding_dim

    def materialize(self) -> torch.Tensor:
        """The equivalent ordinary embedding table."""
        weight = self.base.weight
        for k, table in enumerate(self.tables):
            column = self.parts[:, k]
            rows = table.weight[column.clamp(min=0)] * (column >= 0).unsqueeze(-1)
            weight = weight + rows
        return weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.base(ids)
        for k, table in enumerate(self.tables):
            column = self.parts[ids, k]
            x = x + table(column.clamp(min=0)) * (column >= 0).unsqueeze(-1)
        return x


def plain_model(model: Any) -> Any:
    """The model with a factored embedding folded back into an ordinary table."""
    emb = model.model.embed_tokens
    if not isinstance(emb, nn.Embedding):
        table = nn.Embedding(emb.num_embeddings, emb.embedding_dim, padding_idx=None)
        with torch.no_grad():
            table.weight.copy_(emb.materialize())
        model.model.embed_tokens = table
    return model


def make_batch(config: TrainConfig, tok: Any, step: int, *, salt: str = "train") -> dict[str, Any]:
    """Batch ``step`` of a run: a function of the seed, the step and ``salt`` only."""
    rng = random.Random(f"{salt}/{config.seed}/{step}")
    if config.role == "child":
        # "final": every label is the fully resolved value (the chain after its last hop)
        depths = config.loops_max if config.objective == "stepwise" else max(config.train_hops)
        examples = [child_example(tok, rng, statements=config.statements, hops=config.train_hops, depths=depths,
                                  queries=config.queries,
                                  facts="sentences" if config.fact_sentences and rng.random() < config.fact_sentences
                                  else "statements")
                    for _ in range(config.batch_size)]
        if config.objective == "final":
            for e in examples:
                e.depth_labels = None
    else:
        examples = [root_example(tok, rng) for _ in range(config.batch_size)]
    return collate(examples, tok.pad_token_id)


# -- evaluation ---------------------------------------------------------------------------------------


def evaluate_child(model: Any, tok: Any, *, items: int, seed: int, loops: list[int], hops: list[int],
                   statements: int = 8, facts: str = "statements") -> dict[str, dict[str, float]]:
    """First-turn answer accuracy by loops and hops on held-out sections, written as
    ``facts`` (statements, or fact sentences in training or held-out templates)."""
    model.eval()
    out: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for h in hops:
            rng = random.Random(f"eval/{seed}/{h}")
            prompts, answers = [], []
            for _ in range(items):
                stmts, head, value = make_section(rng, statements, h)
                text = tok.apply_chat_template([{"role": "user", "content": child_prompt(stmts, head, facts, rng)}],
                                               add_generation_prompt=True, tokenize=False)
                prompts.append(text)
                answers.append(tok.convert_tokens_to_ids(value))
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            gold = torch.tensor(answers, device=model.device)
            for n in loops:
                logits = model(enc["input_ids"], attention_mask=enc["attention_mask"], loops=n).logits[:, -1]
                out.setdefault(f"hops{h}", {})[f"L{n}"] = float((logits.argmax(-1) == gold).float().mean())
    model.train()
    return out


def evaluate_root(model: Any, tok: Any, *, items: int, seed: int, loops: int) -> dict[str, float]:
    """Share of unseen questions whose generated first turn is exactly the right program: in
    training phrasings (``program_exact``) and in held-out ones (``program_exact_heldout``)."""
    model.eval()
    out = {}
    for split, name in (("train", "program_exact"), ("heldout", "program_exact_heldout")):
        rng = random.Random(f"eval-root/{seed}/{split}")
        questions = [random_root_question(rng, split) for _ in range(items)]
        replies = generate_replies(model, tok, [q.question for q in questions], loops=loops)
        out[name] = sum(r.strip() == f"```repl\n{q.program}\n```" for q, r in zip(questions, replies)) / items
    model.train()
    return out


def generate_replies(model: Any, tok: Any, questions: list[str], *, loops: int, max_new_tokens: int = 220) -> list[str]:
    """The root's greedy first turn for each question."""
    texts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
             for q in questions]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    with torch.no_grad():
        out = model.generate(enc["input_ids"], attention_mask=enc["attention_mask"], loops=loops,
                             max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
    return tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


# -- the loop ---------------------------------------------------------------------------------------------


class TrainResult(BaseModel):
    out: Path
    steps: int
    seconds: float
    final_loss: float
    evaluation: dict[str, Any]


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = True,
    progress: bool = True,
    on_eval: Callable[[int, dict[str, Any]], None] | None = None,
    device: str = "cpu",
    workers: int = 0,
) -> TrainResult:
    """Train (or continue training) one embedded model into ``out``.

    ``device``: where the model trains ("cpu", "cuda"); ``workers``: processes that
    generate batches ahead (0: in this process). Neither changes the data: batch
    ``k`` is a function of the seed and ``k``.

    Example::

        train(preset("child"), "runs/child")       # rerun the same call to resume
        train(preset("child"), "runs/child", device="cuda", workers=4)
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config_file = out / "train_config.json"
    if config_file.exists() and resume:
        saved = TrainConfig.model_validate_json(config_file.read_text())
        if saved.model_dump(exclude={"steps"}) != config.model_dump(exclude={"steps"}):
            raise ConfigError(f"{out} holds a run with another configuration; use a new --out or --no-resume")
    state_file = out / "train_state.pt"
    resuming = resume and state_file.exists()
    # One thread: small models gain nothing from a second, and lose 10x when a core is busy.
    torch.set_num_threads(1)
    tok = make_tokenizer(config.role)
    model = make_model(config, tok)
    if config.init_from is not None and not resuming:
        load_initial(model, Path(config.init_from))  # first: a wrong path leaves no run behind
    model = model.to(device)
    config_file.write_text(config.model_dump_json(indent=2))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() < 2 or "norm" in name else decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.98))
    sampler = LoopSampler(max_loops=config.loops_max, min_loops=config.loops_min, distribution="uniform",
                          seed=config.seed)
    start, elapsed = 0, 0.0
    if resuming:
        state = torch.load(state_file, weights_only=False, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        start, elapsed = state["step"], state["elapsed"]
    _record_start(out, device, workers, start)
    log_file = open(out / "train_log.jsonl", "a", encoding="utf-8")  # noqa: SIM115 - closed below
    evaluation: dict[str, Any] = {}
    loss = math.nan
    began = time.monotonic() - elapsed

    def save(step: int) -> None:
        tmp = state_file.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "sampler": sampler.state_dict(),
                    "step": step, "elapsed": time.monotonic() - began}, tmp)
        os.replace(tmp, state_file)  # atomic: a kill never leaves a half-written checkpoint

    def evaluate(step: int) -> dict[str, Any]:
        if config.role == "child":
            return evaluate_child(model, tok, items=config.eval_items, seed=config.seed + 10_000, loops=[1, 2, 4, 8],
                                  hops=[1, 2, 3, 4, 5, 6],
                                  statements=8 if 8 in config.statements else max(config.statements))
        return evaluate_root(model, tok, items=config.eval_items, seed=config.seed + 10_000, loops=config.default_loops)

    columns = [TextColumn(f"train {config.role}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("loss {task.fields[loss]}")]
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("train", total=config.steps, completed=start, loss="-")
        try:
            for step, batch in zip(range(start, config.steps), _batches(config, start, workers)):
                lr = _lr(config, step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch = {k: torch.as_tensor(v).to(device, non_blocking=True) for k, v in batch.items()}
                stats = train_step(model, optimizer, batch, loops_sampler=sampler, grad_clip=config.grad_clip)
                loss = stats.loss
                record: dict[str, Any] = {"step": step + 1, "loss": round(loss, 5), "loops": stats.loops, "lr": lr,
                                          "seconds": round(time.monotonic() - began, 2)}
                if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
                    evaluation = evaluate(step + 1)
                    record["eval"] = evaluation
                    if on_eval is not None:
                        on_eval(step + 1, evaluation)
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                    save(step + 1)
                bar.update(task, advance=1, loss=f"{loss:.3f}")
        finally:
            log_file.close()
    if not evaluation:
        evaluation = evaluate(config.steps)
    seconds = time.monotonic() - began
    export(model, tok, out / "model", summary=run_summary(out))
    return TrainResult(out=out, steps=config.steps, seconds=seconds, final_loss=loss, evaluation=evaluation)


def _record_start(out: Path, device: str, workers: int, step: int) -> None:
    """Append where this stretch of the run trains (the model card reads it back)."""
    name = (torch.cuda.get_device_name(device) if device.startswith("cuda")
            else f"{platform.machine()} CPU, {os.cpu_count()} cores")
    record = {"from_step": step, "device": device, "device_name": name, "workers": workers, "torch": torch.__version__,
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with open(out / "train_runs.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _batches(config: TrainConfig, start: int, workers: int) -> Iterator[dict[str, Any]]:
    """Batches ``start, start + 1, ...`` in order, made here or by ``workers`` processes
    (a bounded window ahead, so a slow consumer never piles batches up in memory)."""
    steps = iter(range(start, config.steps))
    if workers <= 0:
        for step in steps:
            yield _worker_batch(config, step)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pending = deque(pool.apply_async(_worker_batch, (config, step)) for step in islice(steps, 4 * workers))
        while pending:
            batch = pending.popleft().get()
            for step in islice(steps, 1):
                pending.append(pool.apply_async(_worker_batch, (config, step)))
            yield batch


def _worker_batch(config: TrainConfig, step: int) -> dict[str, Any]:
    # numpy, not torch: arrays pickle by value (torch tensors would pass file descriptors)
    return {k: v.numpy() for k, v in make_batch(config, make_tokenizer(config.role), step).items()}


def _lr(config: TrainConfig, step: int) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def export(model: Any, tok: Any, path: Path, summary: dict[str, Any] | None = None) -> None:
    """Save a servable checkpoint: plain embedding table, safetensors, tokenizer, and the
    run's :func:`run_summary` as ``training.json`` (what the model card reads)."""
    plain = plain_model(copy.deepcopy(model)).cpu().eval()
    plain.save_pretrained(path)
    tok.save_pretrained(path)
    if summary is not None:
        (path / TRAINING_SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")


#: The file next to an exported model that says how it was trained.
TRAINING_SUMMARY = "training.json"


def run_summary(out: str | Path) -> dict[str, Any]:
    """How a run trained: its configuration, last step, seconds, loss and evaluation, the
    hardware of each stretch (``train_runs.jsonl``) and, for a fine-tune, the summary of the
    model it started from (``init``).

    Example::

        run_summary("runs/root")["steps"]
    """
    out = Path(out)
    config = json.loads((out / "train_config.json").read_text())
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if line.strip()]
    if not log:
        raise ConfigError(f"{out} has no training steps logged yet; train it first")
    last = log[-1]
    evals = [r for r in log if "eval" in r]
    starts = out / "train_runs.jsonl"
    devices = [json.loads(line) for line in starts.read_text().splitlines() if line.strip()] if starts.exists() else []
    hardware = ", ".join(dict.fromkeys(d["device_name"] for d in devices)) or "not recorded"
    summary = {"config": config, "steps": last["step"], "seconds": last["seconds"], "loss": last["loss"],
               "eval": evals[-1]["eval"] if evals else {}, "hardware": hardware}
    init = Path(config["init_from"]) / TRAINING_SUMMARY if config.get("init_from") else None
    if init is not None and init.is_file():
        # a fine-tune: how the model it started from trained (the card shows both stages)
        summary["init"] = json.loads(init.read_text())
    return summary


def export_run(out: str | Path) -> Path:
    """Export the latest checkpoint of a (possibly unfinished) run to ``out/model``."""
    out = Path(out)
    config = TrainConfig.model_validate_json((out / "train_config.json").read_text())
    tok = make_tokenizer(config.role)
    model = make_model(config, tok)
    state = torch.load(out / "train_state.pt", weights_only=False, map_location="cpu")
    model.load_state_dict(state["model"])
    export(model, tok, out / "model", summary=run_summary(out))
    return out / "model"
