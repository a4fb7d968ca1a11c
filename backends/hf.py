"""Looped checkpoints through transformers: ``model("hf:/path/to/ckpt", loops=4)``.

Loads a :class:`LoopedForCausalLM` checkpoint (and its tokenizer) on first use,
generates with its own loop budget per call, batches conversations that share a
budget (left-padded, one cached decode per batch), and reports the loops each
token actually ran (exit gates can stop tokens early).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopagent.errors import BackendError, ModelSpecError

from .base import Completion, LoopStats, Message, Usage, loop_usage
from .local import Gate, LocalLoopedBackend, with_chat_template


@dataclass
class _HFModel:
    """What the backend loads on first use (shared with its copies)."""

    model: Any
    tokenizer: Any
    #: One generation at a time: the model's forward is not thread-safe.
    lock: threading.Lock = field(default_factory=threading.Lock)


class HFLoopedBackend(LocalLoopedBackend):
    """A looped model run in-process with torch.

    Example::

        child = HFLoopedBackend("ckpt/", loops=4, max_new_tokens=64)   # threads=N to pin torch's threads
        child.batch([[{"role": "user", "content": "x=1;y=x;?y"}]] * 8, loops=[1, 2, 4, 8] * 2)
    """

    scheme = "hf"

    def __init__(
        self,
        path: str | Path,
        *,
        loops: int | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        device: str = "cpu",
        dtype: str | None = None,
        batch_size: int = 32,
        seed: int = 0,
        threads: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(path, loops=loops, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                         name=name)
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.threads = threads

    # -- loading ---------------------------------------------------------------------------
    def _open(self) -> _HFModel:
        import torch
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        from .looped import LoopedForCausalLM

        dtype = getattr(torch, self.dtype) if self.dtype else torch.float32
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar in the middle of a run
        try:
            model = LoopedForCausalLM.from_pretrained(self.path, dtype=dtype).to(self.device).eval()
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        try:
            tok = AutoTokenizer.from_pretrained(self.path)
        except (OSError, ValueError) as e:
            raise ModelSpecError(
                f"{str(self.path)!r} has no usable tokenizer ({e}); save one next to the weights"
            ) from None
        # Decoding a small model is a long chain of tiny ops: a second intra-op thread
        # buys nothing and costs 10-30x when the other core is busy. torch's thread
        # count is process-wide, so it is only changed for small models or on request.
        small = sum(p.numel() for p in model.parameters()) < 50_000_000
        if self.threads is not None or small:
            torch.set_num_threads(self.threads or 1)
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        return _HFModel(model, with_chat_template(tok))

    @property
    def model(self) -> Any:
        """The ``LoopedForCausalLM`` (loaded on first use)."""
        return self._loaded().model

    # -- calls -----------------------------------------------------------------------------
    async def _agenerate(
        self, conversations: list[Sequence[Message]], budgets: list[int], max_new: int, gate: Gate | None
    ) -> list[Completion]:
        exit_threshold = None if gate is None else gate.exit_threshold
        return await asyncio.to_thread(self._generate_all, conversations, budgets, max_new, exit_threshold)

    def _generate_all(
        self,
        conversations: list[Sequence[Message]],
        budgets: list[int],
        max_new: int,
        exit_threshold: float | None,
    ) -> list[Completion]:
        # One cached decode per (loop budget) group: a cache holds one budget's layers.
        groups: dict[int, list[int]] = defaultdict(list)
        for i, n in enumerate(budgets):
            groups[n].append(i)
        results: list[Completion | None] = [None] * len(conversations)
        with self._loaded().lock:
            for n, indices in groups.items():
                for start in range(0, len(indices), self.batch_size):
                    chunk = indices[start : start + self.batch_size]
                    outs = self._generate([conversations[i] for i in chunk], n, max_new, exit_threshold)
                    for i, out in zip(chunk, outs):
                        results[i] = out
        return [r for r in results if r is not None]

    def _generate(
        self, conversations: list[Sequence[Message]], loops: int, max_new: int, exit_threshold: float | None
    ) -> list[Completion]:
        import torch

        start = time.perf_counter()
        tok, model = self.tokenizer, self.model
        enc = tok(self._prompts(conversations), return_tensors="pt", padding=True,
                  add_special_tokens=False).to(self.device)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        prompt_lens = mask.sum(1).tolist()
        eos = tok.eos_token_id
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        new_tokens: list[list[int]] = [[] for _ in conversations]
        exits = [mask.new_zeros(0) for _ in conversations]
        done = torch.zeros(len(conversations), dtype=torch.bool, device=self.device)
        try:
            with torch.no_grad():
                out = model(ids, attention_mask=mask, use_cache=True, loops=loops, exit_threshold=exit_threshold)
                for row in range(len(conversations)):
                    exits[row] = out.exit_steps[row][mask[row].bool()]
                cache = out.cache
                for _ in range(max_new):
                    nxt = self._pick(out.logits[:, -1], generator)
                    for row in range(len(conversations)):
                        if not done[row]:
                            if nxt[row].item() == eos:
                                done[row] = True
                            else:
                                new_tokens[row].append(int(nxt[row]))
                    if bool(done.all()):
                        break
                    mask = torch.cat([mask, (~done).long()[:, None]], 1)
                    out = model(nxt[:, None], attention_mask=mask, cache=cache, use_cache=True, loops=loops,
                                exit_threshold=exit_threshold)
                    for row in range(len(conversations)):
                        if not done[row]:
                            exits[row] = torch.cat([exits[row], out.exit_steps[row]])
        except RuntimeError as e:
            raise BackendError(f"{self.name}: generation failed: {e}") from None
        wall = time.perf_counter() - start
        completions = []
        for row in range(len(conversations)):
            steps = exits[row]
            executed = float(steps.float().mean()) if steps.numel() else float(loops)
            histogram = ({int(k): int(v) for k, v in zip(*torch.unique(steps, return_counts=True))}
                         if exit_threshold is not None else None)
            p, c = int(prompt_lens[row]), len(new_tokens[row])
            completions.append(Completion(
                text=tok.decode(new_tokens[row], skip_special_tokens=True),
                model=self.name,
                usage=Usage(prompt_tokens=p, completion_tokens=c,
                            loop_tokens=int(steps.sum()) if steps.numel() else loop_usage(p, c, loops),
                            wall_s=wall),
                loops=LoopStats(requested=loops, executed_mean=executed, exit_histogram=histogram),
                finish_reason="stop" if bool(done[row]) else "length",
            ))
        return completions

    def _pick(self, logits: Any, generator: Any) -> Any:
        import torch

        if self.temperature <= 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits / self.temperature, -1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
