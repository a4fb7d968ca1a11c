"""The child prompt guard: a sub-call prompt that does not fit the child's context window.

A backend that knows its window (``Backend.context_window``: a local checkpoint's
``max_position_embeddings``, a served model's ``max_model_len``, litellm's
``max_input_tokens``, or ``context_window=`` given to the backend) gets no prompt longer
than the window minus the tokens kept for the reply (the call's ``max_tokens``, else the
backend's ``default_max_tokens``). What happens to a longer one is the RLM's ``oversize``
policy:

- ``"error"`` (default): the call is not sent; the model reads a
  :class:`~loopagent.errors.PromptTooLongError` naming both sizes and the chunk size in
  characters that would fit, and the run goes on.
- ``"split"``: :func:`split_prompt` cuts the prompt into consecutive pieces that fit
  (at a line break where one falls in the second half of a piece, else at whitespace, else
  anywhere), each piece is sent alone as its own call (same model, loops and settings;
  pieces that are only whitespace are not sent), and the answers are joined in order with
  a blank line between them. Nothing is added to the pieces: an instruction at the start
  of the prompt reaches the first piece only, so this suits prompts that are one long text
  to read piecewise (extraction, listing); the trajectory logs the number of pieces.

A backend whose window is unknown (None) is never guarded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from loopagent.backends.base import Backend
from loopagent.errors import ConfigError, InvalidSettingError, PromptTooLongError

OversizePolicy = Literal["error", "split"]
OVERSIZE_POLICIES: tuple[str, ...] = ("error", "split")

#: A chunk size in characters is an estimate from the prompt's own characters per token;
#: this margin keeps a chunk of that size inside the window when its text is denser.
_MARGIN = 0.9


def check_oversize(policy: str) -> OversizePolicy:
    if policy not in OVERSIZE_POLICIES:
        raise ConfigError(f"oversize must be one of {', '.join(map(repr, OVERSIZE_POLICIES))}, got {policy!r}")
    return policy  # type: ignore[return-value]


def prompt_budget(backend: Backend, max_tokens: int | None, fn: str) -> int | None:
    """Prompt tokens a call to ``backend`` may send (its window less the reply's tokens);
    None when the window is unknown. :class:`InvalidSettingError` when the reply alone
    fills the window."""
    window = backend.context_window
    if window is None:
        return None
    reserve = max_tokens if max_tokens is not None else (backend.default_max_tokens or 0)
    budget = window - reserve
    if budget <= 0:
        raise InvalidSettingError(
            f"{fn}(): max_tokens={reserve:,} leaves no room for a prompt in {backend.name}'s context window of "
            f"{window:,} tokens; ask for fewer tokens (max_tokens=...)"
        )
    return budget


def too_long(backend: Backend, prompt: str, prompt_tokens: int, budget: int, fn: str) -> PromptTooLongError:
    """The error the model reads for a prompt of ``prompt_tokens`` over ``budget``."""
    window = backend.context_window or budget
    max_chars = max(1, int(budget * len(prompt) / max(1, prompt_tokens) * _MARGIN))
    kept = window - budget
    reply = f", {kept:,} of them kept for the reply, so a prompt may have {budget:,}" if kept else ""
    return PromptTooLongError(
        f"{fn}(): the prompt is {prompt_tokens:,} tokens but {backend.name}'s context window is {window:,} tokens"
        f"{reply}: not sent. Split the text into chunks of at most {max_chars:,} characters and ask about them "
        "with llm_batch([...]), then combine the answers.",
        prompt_tokens=prompt_tokens, window=window, max_chars=max_chars,
    )


def split_prompt(text: str, budget: int, count_tokens: Callable[[str], int]) -> list[str]:
    """Consecutive pieces of ``text`` of at most ``budget`` tokens each; ``"".join`` of them is
    ``text``. Cuts after a line break in the second half of a piece, else after whitespace,
    else anywhere.

    Example::

        split_prompt("a b\\nc d\\n" * 1000, 500, backend.count_tokens)   # ['a b\\nc d\\n...', ...]
    """
    total = count_tokens(text)
    if total <= budget:
        return [text]
    chars_per_token = len(text) / max(1, total)
    pieces: list[str] = []
    pos = 0
    while pos < len(text):
        size = max(1, int(budget * chars_per_token * _MARGIN))
        while True:
            end = min(len(text), pos + size)
            if end < len(text):
                end = _boundary(text, pos, end)
            tokens = count_tokens(text[pos:end])
            if tokens <= budget or end - pos <= 1:
                break
            size = max(1, min(end - pos - 1, int((end - pos) * budget / tokens * _MARGIN)))
        pieces.append(text[pos:end])
        pos = end
    return pieces


def _boundary(text: str, start: int, end: int) -> int:
    """Where to cut ``text[start:end]``: after its last line break or whitespace in the second half."""
    half = start + (end - start) // 2
    cut = text.rfind("\n", half, end)
    if cut < 0:
        cut = max(text.rfind(" ", half, end), text.rfind("\t", half, end))
    return cut + 1 if cut >= 0 else end


__all__ = ["OVERSIZE_POLICIES", "OversizePolicy", "check_oversize", "prompt_budget", "split_prompt", "too_long"]
