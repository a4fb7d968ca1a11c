"""Evaluation items and tasks: the shapes every generator, loader and scorer share.

A :class:`Task` makes :class:`Item` s (a question, a long context, the gold answer)
from a seed and a target length, and scores a prediction against an item with its
benchmark's published rule. Tasks register by name so the runner and the CLI can
find them (``get_task("sniah")``).

A generator implements :meth:`Task.make_item`, one item at its :class:`ItemSlot`; the
request checks, the loop over indices and the per-item randomness live in
:meth:`Task.generate`. Tasks that read items from a file override ``generate`` instead.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

from loopagent.errors import ConfigError

AnswerType = Literal["exact", "numeric", "pairs", "choice", "text"]

#: The shortest context a generator makes (characters).
MIN_LENGTH = 1_000


class Item(BaseModel):
    """One evaluation example."""

    id: str = Field(description="Stable id: task, seed, length and index, so resumed runs find done items.")
    task: str
    question: str
    context: Any = Field(description="str, list[str] or dict (JSON-like): what the RLM gets as `context`.")
    answer: Any = Field(description="Gold answer: str, number, list of pairs, or a choice letter.")
    answer_type: AnswerType
    length_chars: int = Field(description="Size of the context in characters.")
    meta: dict[str, Any] = Field(default_factory=dict, description="Generator details (hops, needle position, ...).")


def context_length(context: Any) -> int:
    """Characters of a context: a str's length; for a list the sum over its strings; for a dict
    the sum over its keys and values."""
    if isinstance(context, str):
        return len(context)
    if isinstance(context, dict):
        return sum(len(str(k)) + context_length(v) for k, v in context.items())
    if isinstance(context, (list, tuple)):
        return sum(context_length(v) for v in context)
    return len(str(context))


@dataclass(frozen=True)
class ItemSlot:
    """Where one generated item sits in a request: its task, seed, target length and index.

    Item ``index`` depends on these four only (not on ``n``), so a longer run extends a
    shorter one.
    """

    task: str
    seed: int
    length_chars: int
    index: int

    @property
    def id(self) -> str:
        """The item's stable id, e.g. ``"sniah-s0-L8000-3"``."""
        return f"{self.task}-s{self.seed}-L{self.length_chars}-{self.index}"

    def rng(self) -> random.Random:
        """The item's own generator. ``random.Random`` seeded with a str hashes it with SHA-512,
        independent of ``PYTHONHASHSEED`` and the platform."""
        return random.Random(f"{self.task}|{self.seed}|{self.length_chars}|{self.index}")

    def item(self, *, question: str, context: Any, answer: Any, answer_type: AnswerType,
             meta: dict[str, Any] | None = None, item_id: str | None = None) -> Item:
        """The :class:`Item` at this slot (id :attr:`id` unless ``item_id``); its size is measured from
        ``context``."""
        return Item(id=self.id if item_id is None else item_id, task=self.task, question=question, context=context,
                    answer=answer, answer_type=answer_type, length_chars=context_length(context), meta=meta or {})


def check_request(n: int, length_chars: int) -> None:
    """Raise ``ValueError`` unless ``n >= 0`` and ``length_chars >= MIN_LENGTH``."""
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    if length_chars < MIN_LENGTH:
        raise ConfigError(f"length_chars must be at least {MIN_LENGTH}, got {length_chars}")


def check_choices(chosen: Iterable[str] | None, known: tuple[str, ...], what: str) -> tuple[str, ...]:
    """A task option naming some of ``known`` (all of them when empty), as a tuple.

    ``what`` names the option in the error: "unknown oolong question kinds ['x']; known: ...".
    """
    picked = tuple(chosen) if chosen else known
    unknown = set(picked) - set(known)
    if unknown:
        raise ConfigError(f"unknown {what} {sorted(unknown)}; known: {', '.join(known)}")
    return picked


class Task(ABC):
    """A family of evaluation items.

    Example::

        task = get_task("sniah")
        items = task.generate(n=10, length_chars=32_000, seed=0)
        task.score(items[0], "the predicted answer")   # 0.0 .. 1.0
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""

    def generate(self, n: int, length_chars: int, seed: int = 0) -> list[Item]:
        """``n`` items whose contexts are about ``length_chars`` long; same seed, same items."""
        check_request(n, length_chars)
        slots = [ItemSlot(self.name, seed, length_chars, index) for index in range(n)]
        return [self.make_item(self.item_rng(slot), slot) for slot in slots]

    def item_rng(self, slot: ItemSlot) -> random.Random:
        """The generator :meth:`make_item` draws from (default: :meth:`ItemSlot.rng`)."""
        return slot.rng()

    def make_item(self, rng: random.Random, slot: ItemSlot) -> Item:
        """One item: a function of ``rng``, ``slot`` and the task's options only."""
        raise NotImplementedError(f"{type(self).__name__} generates no items: implement make_item or generate")

    @abstractmethod
    def score(self, item: Item, prediction: str | None) -> float:
        """Score in [0, 1] following the benchmark's published rule."""


_REGISTRY: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: make a task available by its ``name``."""
    _REGISTRY[cls.name] = cls
    return cls


class UnknownTaskError(ConfigError, KeyError):
    """No task of that name."""

    def __str__(self) -> str:
        return str(self.args[0])


def get_task(name: str, **options: Any) -> Task:
    """The registered task ``name`` (generators and loaders alike)."""
    _load_builtin_tasks()
    cls = _REGISTRY.get(name)
    if cls is None:
        raise UnknownTaskError(f"unknown task {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return cls(**options)


def task_names() -> list[str]:
    _load_builtin_tasks()
    return sorted(_REGISTRY)


def _load_builtin_tasks() -> None:
    # Importing the modules registers their tasks.
    from loopagent.evals import chains, loaders, tasks  # noqa: F401
