"""The base of backends that run a looped checkpoint in this process (``hf:``, ``vllm:``).

What they share: a checkpoint folder whose ``config.json`` is a looped model's (read at
construction, so a wrong path fails before anything loads), the loop budgets it declares
(``default_loops``, ``max_loops``), the name ``SCHEME:PATH``, generation defaults, the
checkpoint's own tokenizer (prompts are rendered with its chat template, or the project's
default template where it has none, and tokens are counted with it), and lazy loading:
nothing heavy happens before the first call or :meth:`~LocalLoopedBackend.check`.
A subclass says how it loads (``_open``) and how it generates (``_agenerate``).
"""

from __future__ import annotations

import asyncio
import threading
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopagent.errors import ConfigError
from loopagent.validation import check_gate, check_int, check_temperature

from .base import Backend, Completion, Message, _per_call_loops
from .checkpoint import looped_checkpoint_config


@dataclass(frozen=True)
class Gate:
    """Exit-gate options of one call (checked by :func:`loopagent.validation.check_gate`):
    a token stops once its cumulative exit probability reaches ``exit_threshold`` (never
    before ``min_loops`` loops). A call that gives only ``min_loops`` gets the checkpoint's
    ``config.exit_threshold``, resolved once by :meth:`LocalLoopedBackend.abatch`."""

    exit_threshold: float
    min_loops: int | None = None


class LocalLoopedBackend(Backend):
    """A looped checkpoint run in-process; subclasses: ``HFLoopedBackend``, ``VLLMBackend``.

    Example::

        class EchoBackend(LocalLoopedBackend):
            scheme = "echo"

            def _open(self):             # load once; the result has a ``tokenizer``
                ...

            async def _agenerate(self, conversations, budgets, max_new, gate, temperature):
                ...                      # one Completion per conversation, budgets validated

        EchoBackend("ckpt/", loops=4).name   # 'echo:ckpt'

    Copies made by :meth:`with_default_loops` share what is loaded (one model, one engine).
    """

    #: Prefix of the default name: "hf" names a backend "hf:/path/to/ckpt".
    scheme: str = "local"
    looped = True

    def __init__(
        self,
        path: str | Path,
        *,
        loops: int | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        self.path = Path(path)
        #: The checkpoint's ``config.json``.
        self.checkpoint_config: dict[str, Any] = looped_checkpoint_config(self.path)
        self.name = name or f"{self.scheme}:{self.path}"
        self.max_loops = int(self.checkpoint_config["max_loops"])
        self.default_loops = int(self.checkpoint_config["default_loops"])
        if loops is not None:
            self.default_loops = self.validate_loops(loops)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.seed = seed
        # One holder object, so that shallow copies (with_default_loops) share the loaded model.
        self._lazy = _Lazy()

    # -- loading ---------------------------------------------------------------------------
    @abstractmethod
    def _open(self) -> Any:
        """Load the model; returns what the subclass keeps (an object with a ``tokenizer``).
        Called once, under a lock, on first use."""

    def _loaded(self) -> Any:
        """What :meth:`_open` returned, opening it on first use."""
        lazy = self._lazy
        with lazy.lock:
            if lazy.value is None:
                lazy.value = self._open()
            return lazy.value

    async def _aloaded(self) -> Any:
        """:meth:`_loaded` without blocking the event loop while the model loads."""
        if self._lazy.value is None:
            await asyncio.to_thread(self._loaded)
        return self._loaded()

    def _unload(self) -> Any:
        """Forget what is loaded (here and in every copy) and return it (None if nothing was)."""
        with self._lazy.lock:
            value, self._lazy.value = self._lazy.value, None
        return value

    @property
    def loaded(self) -> bool:
        """Whether the model is loaded (for vLLM: the engine is running)."""
        return self._lazy.value is not None

    def check(self) -> None:
        self._loaded()

    @property
    def tokenizer(self) -> Any:
        """The checkpoint's tokenizer (loads the model on first use)."""
        return self._loaded().tokenizer

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- calls -----------------------------------------------------------------------------
    async def acomplete(
        self, messages: Sequence[Message], *, loops: int | None = None, max_tokens: int | None = None, **kwargs: Any
    ) -> Completion:
        return (await self.abatch([messages], loops=loops, max_tokens=max_tokens, **kwargs))[0]

    async def abatch(
        self,
        conversations: Sequence[Sequence[Message]],
        *,
        loops: int | None | Sequence[int | None] = None,
        max_tokens: int | None = None,
        concurrency: int = 64,
        exit_threshold: float | None = None,
        min_loops: int | None = None,
        temperature: float | None = None,
        **kwargs: Any,
    ) -> list[Completion]:
        """Complete many conversations in the model's own batches (``concurrency`` does not
        apply). ``exit_threshold`` lets the exit gate stop each token once its cumulative
        exit probability reaches it, never before ``min_loops`` loops and never past the
        call's budget (``loops``); both need a checkpoint with an exit gate. ``max_tokens``
        and ``temperature`` (0: greedy) override the backend's ``max_new_tokens`` and
        ``temperature`` for this call; any other option is refused (ConfigError)."""
        if kwargs:
            raise ConfigError(
                f"{self.name} does not take {', '.join(sorted(kwargs))}; a call takes loops, max_tokens, "
                "temperature, exit_threshold and min_loops"
            )
        max_new = self.max_new_tokens if max_tokens is None else check_int(max_tokens, "max_tokens", minimum=1)
        heat = self.temperature if temperature is None else check_temperature(temperature, model=self.name)
        per_call = _per_call_loops(loops, len(conversations))
        budgets = [int(self.validate_loops(n)) for n in per_call]  # type: ignore[arg-type]
        for n in budgets:
            exit_threshold, min_loops = check_gate(exit_threshold, min_loops, loops=n, has_gate=self.has_exit_gate,
                                                   model=self.name)
        gate = None
        if exit_threshold is not None or min_loops is not None:
            if exit_threshold is None:  # min_loops alone: the checkpoint's own threshold
                exit_threshold = float(self.checkpoint_config.get("exit_threshold", 0.9))
            gate = Gate(exit_threshold, min_loops)
        return await self._agenerate(list(conversations), budgets, max_new, gate, heat)

    @property
    def has_exit_gate(self) -> bool:
        """Whether the checkpoint has an exit gate (``config.exit_gate``): what adaptive exit needs."""
        return bool(self.checkpoint_config.get("exit_gate", False))

    @property
    def context_window(self) -> int | None:  # type: ignore[override]
        """Positions the checkpoint was built for (``config.max_position_embeddings``), where it says."""
        value = self.checkpoint_config.get("max_position_embeddings")
        return int(value) if isinstance(value, int) and value > 0 else None

    @property
    def default_temperature(self) -> float:  # type: ignore[override]
        return self.temperature

    @property
    def default_max_tokens(self) -> int:  # type: ignore[override]
        return self.max_new_tokens

    @abstractmethod
    async def _agenerate(
        self, conversations: list[Sequence[Message]], budgets: list[int], max_new: int, gate: Gate | None,
        temperature: float,
    ) -> list[Completion]:
        """Generate a reply (at most ``max_new`` tokens, sampled at ``temperature``; 0 is greedy)
        for each conversation, with its budget (and the exit gate's options, already checked,
        when ``gate`` is given)."""

    def _prompts(self, conversations: Sequence[Sequence[Message]]) -> list[str]:
        """Each conversation rendered by the chat template, ready for the assistant's reply."""
        tok = self.tokenizer
        return [tok.apply_chat_template(list(c), add_generation_prompt=True, tokenize=False) for c in conversations]


class _Lazy:
    """A lazily loaded value and the lock that guards its loading."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.value: Any = None


def with_chat_template(tokenizer: Any) -> Any:
    """``tokenizer``, given the project's default chat template if it has none."""
    from .looped.tokenizer import DEFAULT_CHAT_TEMPLATE

    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return tokenizer


__all__ = ["Gate", "LocalLoopedBackend", "with_chat_template"]
