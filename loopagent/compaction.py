"""History compaction: older root turns folded into notes the root model writes.

A run's conversation is ``[system, question, turn, turn, ...]``, a turn being the model's
reply and the message after it (REPL output, or what was wrong). When its tokens reach
``fraction`` of the model's context window, every turn but the last ``keep_turns`` is
summarized by the model in one call, and the conversation becomes
``[system, question, notes, last turns]``. The next compaction folds the notes and the
turns after them into new notes. Every message of the run stays readable in the REPL
variable :data:`HISTORY_VARIABLE` (a list of ``{"role", "content"}`` dicts): set at the
first compaction, then at each turn, it holds every message before the current turn.

The window comes from ``RLM(root_context_window=...)`` for the root run, else from the
backend's ``context_window`` attribute; when neither is known, compaction never happens.
Tokens are counted as usage counts a prompt: the backend's ``count_tokens`` over the
messages' text.

Example::

    rlm = RLM(root, compact_at=0.8, compact_keep_turns=2, root_context_window=128_000)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loopagent import prompts
from loopagent.backends.base import Backend, messages_text

#: The REPL variable holding every message of a run once it was compacted.
HISTORY_VARIABLE = "history"

Message = dict[str, str]
_HEAD = 2  # the system prompt and the question are never folded
_MIN_CLIP = 200  # characters a folded message keeps, however tight the window


def _window(backend: Backend, override: int | None = None) -> int | None:
    """The context window (tokens) of ``backend``: ``override``, else its ``context_window``
    attribute when it has a positive int one, else None (unknown)."""
    if override is not None:
        return override
    window = getattr(backend, "context_window", None)
    return window if isinstance(window, int) and not isinstance(window, bool) and window > 0 else None


@dataclass
class Plan:
    """One compaction to make: the turns to fold and the request that summarizes them."""

    request: list[Message]
    folded: list[Message]
    keep: list[Message]
    tokens_before: int

    @property
    def turns(self) -> int:
        return len(self.folded) // 2


@dataclass
class Compactor:
    """Decides when a run's conversation is compacted and rebuilds it (one per run)."""

    backend: Backend
    window: int
    fraction: float
    keep_turns: int
    folded: list[Message] = field(default_factory=list)  # every message folded so far, in order
    summarized: bool = False  # whether messages[_HEAD] holds notes

    @classmethod
    def for_run(cls, backend: Backend, *, fraction: float | None, keep_turns: int,
                window: int | None = None) -> Compactor | None:
        """A compactor, or None when compaction is off or the window is unknown."""
        size = _window(backend, window)
        if fraction is None or size is None:
            return None
        return cls(backend=backend, window=size, fraction=fraction, keep_turns=keep_turns)

    @property
    def threshold(self) -> int:
        return max(1, int(self.window * self.fraction))

    def tokens(self, messages: list[Message]) -> int:
        return self.backend.count_tokens(messages_text(messages))

    def plan(self, messages: list[Message]) -> Plan | None:
        """The compaction ``messages`` need now, or None (below the threshold, or nothing to fold)."""
        before = self.tokens(messages)
        if before < self.threshold:
            return None
        start = _HEAD + (1 if self.summarized else 0)
        body = messages[start:]
        cut = max(0, len(body) - 2 * self.keep_turns)
        cut -= cut % 2  # whole turns only
        if cut == 0:
            return None
        previous = messages[_HEAD]["content"] if self.summarized else None
        folded = [dict(m) for m in body[:cut]]
        return Plan(request=self._request(messages[1]["content"], previous, folded), folded=folded,
                    keep=body[cut:], tokens_before=before)

    def _request(self, query: str, previous: str | None, folded: list[Message]) -> list[Message]:
        """The summary request, long messages clipped (each to a halving share) until it fits
        under the threshold; the words cut stay in the history variable."""
        cap = max((len(m["content"]) for m in folded), default=0)
        while True:
            shown = [m if len(m["content"]) <= cap else
                     {**m, "content": m["content"][:cap] + f"\n... [{len(m['content']) - cap:,} more characters, "
                      f"in `{HISTORY_VARIABLE}`]"} for m in folded]
            request = [{"role": "system", "content": prompts.COMPACTION_SYSTEM},
                       {"role": "user", "content": prompts.compaction_request(query, previous,
                                                                              prompts.transcript(shown))}]
            if cap <= _MIN_CLIP or self.tokens(request) <= self.threshold:
                return request
            cap //= 2

    def apply(self, messages: list[Message], plan: Plan, summary: str,
              variable: str | None) -> list[Message]:
        """The conversation after ``plan``: head, the notes (cut to a quarter of the window), kept turns."""
        summary = summary.strip() or "(the model wrote no notes)"
        limit = max(1, self.window // 4)
        tokens = self.tokens([{"role": "user", "content": summary}])
        if tokens > limit:
            keep = max(_MIN_CLIP, len(summary) * limit // tokens)
            summary = summary[:keep] + f"\n... [notes cut to about {limit:,} tokens]"
        self.folded += plan.folded
        self.summarized = True
        note = {"role": "user", "content": prompts.compaction_summary(summary, len(self.folded) // 2, variable)}
        return [*messages[:_HEAD], note, *plan.keep]

    def history(self, messages: list[Message]) -> list[dict[str, Any]]:
        """Every message of the run so far, none folded: what the REPL variable holds."""
        start = _HEAD + (1 if self.summarized else 0)
        return [{"role": m["role"], "content": m["content"]} for m in (*messages[:_HEAD], *self.folded,
                                                                        *messages[start:])]
