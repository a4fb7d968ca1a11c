"""Evaluation items and tasks: the shapes every generator, loader and scorer share.

A :class:`Task` makes :class:`Item` s (a question, a long context, the gold answer)
from a seed and a target length, and scores a prediction against an item with its
benchmark's published rule. Tasks register by name so the runner and the CLI can
find them (``get_task("sniah")``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

from loopagent.errors import ConfigError

AnswerType = Literal["exact", "numeric", "pairs", "choice", "text"]


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


class Task(ABC):
    """A family of evaluation items.

    Example::

        task = get_task("sniah")
        items = task.generate(n=10, length_chars=32_000, seed=0)
        task.score(items[0], "the predicted answer")   # 0.0 .. 1.0
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""

    @abstractmethod
    def generate(self, n: int, length_chars: int, seed: int = 0) -> list[Item]:
        """``n`` items whose contexts are about ``length_chars`` long; same seed, same items."""

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
