"""The embedded default: two small looped models shipped with loopagent.

- ``root`` writes the REPL program for a question (needle search, a section's
  variable, counting over sections), reads the REPL output and answers;
- ``child`` resolves a variable in one section of statements; more loops resolve
  longer chains (latent depth).

``model("embedded", loops=...)`` gives a backend that becomes the root or the
child when an RLM takes it in either place (``Backend.for_role``). ``loops`` (alias
``child_loops``) is the child's budget, the latent depth the demo varies; ``root_loops``
the root's (each default: its checkpoint's ``default_loops``; each checked against that
role's ``max_loops``);
``model("embedded:root")`` / ``model("embedded:child")`` pick one explicitly. The
weights are ordinary :class:`LoopedForCausalLM` checkpoints under ``weights/``
(see ``weights/MODEL_CARD.md``), served by the ``hf:`` backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loopagent.backends.base import Backend, Completion, Message
from loopagent.backends.hf import HFLoopedBackend
from loopagent.errors import ConfigError, ModelSpecError

WEIGHTS = Path(__file__).resolve().parent / "weights"
ROLES = ("root", "child")
_MAX_NEW = {"root": 256, "child": 4}


def embedded_path(role: str, weights: Path | None = None) -> Path:
    path = (weights or WEIGHTS) / role
    if not (path / "config.json").is_file():
        raise ModelSpecError(
            f"the embedded {role} model is missing at {path}; train it with `loopagent train {role} --out DIR` "
            "and pass weights=DIR's parent, or reinstall loopagent"
        )
    return path


def embedded_role(
    role: str, *, loops: int | None = None, weights: Path | None = None, **kwargs: Any
) -> HFLoopedBackend:
    """The root or child model as a plain ``hf:`` backend."""
    if role not in ROLES:
        raise ModelSpecError(f"embedded role must be one of {ROLES}, got {role!r}")
    kwargs.setdefault("max_new_tokens", _MAX_NEW[role])
    return HFLoopedBackend(embedded_path(role, weights), loops=loops, name=f"embedded:{role}", **kwargs)


class EmbeddedBackend(Backend):
    """Both embedded models behind one spec; an RLM picks the role (see module docs).

    Used directly, a conversation with a system message goes to the root, others to
    the child.

    Example::

        backend = EmbeddedBackend(loops=8, root_loops=4)   # child at 8 loops, root at 4
    """

    looped = True

    def __init__(self, *, loops: int | None = None, child_loops: int | None = None, root_loops: int | None = None,
                 weights: Path | None = None, **kwargs: Any) -> None:
        if loops is not None and child_loops is not None and loops != child_loops:
            raise ConfigError(f"loops={loops} and child_loops={child_loops} both set the embedded child's budget; "
                              "give one of them")
        self.name = "embedded"
        self._loops = {"child": child_loops if child_loops is not None else loops, "root": root_loops}
        self._weights = weights
        self._kwargs = kwargs
        self._roles: dict[str, HFLoopedBackend] = {}
        self.child_backend = self._role("child")  # fails early if the weights are missing (or loops are bad)
        if root_loops is not None:
            self._role("root")  # a bad root budget fails here too, naming the root's maximum
        self.default_loops = self.child_backend.default_loops
        self.max_loops = self.child_backend.max_loops

    def _role(self, role: str) -> HFLoopedBackend:
        if role not in self._roles:
            self._roles[role] = embedded_role(role, loops=self._loops[role], weights=self._weights, **self._kwargs)
        return self._roles[role]

    def for_role(self, role: str) -> Backend:
        return self._role(role)

    async def acomplete(
        self, messages: Sequence[Message], *, loops: int | None = None, max_tokens: int | None = None, **kwargs: Any
    ) -> Completion:
        role = "root" if any(m.get("role") == "system" for m in messages) else "child"
        return await self._role(role).acomplete(messages, loops=loops, max_tokens=max_tokens, **kwargs)

    def count_tokens(self, text: str) -> int:
        return self.child_backend.count_tokens(text)

    @property
    def context_window(self) -> int | None:  # type: ignore[override]
        return self.child_backend.context_window

    @property
    def default_temperature(self) -> float:  # type: ignore[override]
        return self.child_backend.default_temperature

    @property
    def default_max_tokens(self) -> int:  # type: ignore[override]
        return self.child_backend.default_max_tokens


__all__ = ["EmbeddedBackend", "WEIGHTS", "embedded_role"]
