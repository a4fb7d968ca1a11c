"""A tiny task and scripted models for the runner tests (also imported by the
subprocesses the tests start, so it must not depend on pytest).

The task hides ``The secret number is N.`` in filler text; the scripted root finds
it with REPL code, after asking the looped child for its loop budget, and answers
right only when the child ran with at least 2 loops: accuracy then depends on the
child-loops axis, as a real sweep's would.
"""

from __future__ import annotations

import random
from typing import Any

from loopagent.backends.scripted import ScriptedBackend
from loopagent.evals.base import Item, Task

ROOT_CODE = (
    "```repl\n"
    "import re\n"
    "loops = int(llm_query('how many loops do you run?'))\n"
    "n = re.search(r'secret number is (\\d+)', context).group(1)\n"
    "FINAL(n if loops >= 2 else 'wrong')\n"
    "```"
)


class NeedleTask(Task):
    name = "needle-test"
    description = "find the secret number (runner tests)"

    def __init__(self, hops: int = 1) -> None:
        self.hops = hops

    def generate(self, n: int, length_chars: int, seed: int = 0) -> list[Item]:
        items = []
        for i in range(n):
            rng = random.Random(f"{seed}-{length_chars}-{i}")
            secret = str(rng.randrange(10_000, 99_999))
            filler = "lorem ipsum dolor sit amet "
            body = (filler * (length_chars // len(filler) + 1))[: max(0, length_chars - 40)]
            at = rng.randrange(0, len(body) + 1)
            context = body[:at] + f" The secret number is {secret}. " + body[at:]
            items.append(Item(id=f"{self.name}-s{seed}-l{length_chars}-{i}", task=self.name,
                              question="What is the secret number?", context=context, answer=secret,
                              answer_type="exact", length_chars=len(context)))
        return items

    def score(self, item: Item, prediction: str | None) -> float:
        return 1.0 if prediction is not None and prediction.strip() == item.answer else 0.0


class HalfTask(NeedleTask):
    """Fractional scores (0.5 for a right answer) to exercise the bootstrap interval."""

    name = "needle-half"

    def score(self, item: Item, prediction: str | None) -> float:
        return 0.5 * super().score(item, prediction) + (0.25 if int(item.answer) % 2 else 0.0)


def root_model(latency_s: float = 0.0, name: str = "scripted-root") -> ScriptedBackend:
    return ScriptedBackend(lambda messages, loops: ROOT_CODE, name=name, latency_s=latency_s)


def child_model(latency_s: float = 0.0, name: str = "scripted-child") -> ScriptedBackend:
    return ScriptedBackend(lambda messages, loops: str(loops), name=name, looped=True, default_loops=1,
                           max_loops=8, latency_s=latency_s)


def sweep_kwargs(out: Any, **overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(root=root_model(), child=child_model(), child_loops=[1, 2], depths=[1],
                                  lengths=["2k"], n=4, out=out, concurrency=4, progress=False)
    kwargs.update(overrides)
    return kwargs
