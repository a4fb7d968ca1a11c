"""``multihop``: follow a chain of variable assignments spread through a long document.

Statements such as ``Remember that xq41 = kb7.`` ... ``Remember that kb7 = 512.`` sit at seeded
places in prose filler, shuffled, among distractor chains (some of which point *into* the
asked chain, so a variable can be referenced more than once). Each variable is assigned exactly
once, so the answer is found by following ``hops`` assignments from the asked variable.
"""

from __future__ import annotations

import random

from loopagent.evals.base import Item, ItemSlot, Task, register
from loopagent.evals.scorers import exact_match
from loopagent.evals.tasks._common import scatter, task_filler
from loopagent.validation import check_int

_LETTERS = "abcdefghijkmnpqrstuvwxyz"
STATEMENT = "Remember that {lhs} = {rhs}."
QUESTION = ("The document assigns variables with statements like 'Remember that a1 = b2.' or "
            "'Remember that b2 = 7.'. What is the numeric value of {var}? Answer with the number only.")


def _names(rng: random.Random, k: int) -> list[str]:
    names: set[str] = set()
    while len(names) < k:
        names.add(rng.choice(_LETTERS) + rng.choice(_LETTERS) + str(rng.randrange(1, 1000)))
    out = sorted(names)
    rng.shuffle(out)
    return out


@register
class MultiHop(Task):
    """Variable chains: resolve ``x`` through ``hops`` assignments, with distractor chains."""

    name = "multihop"
    description = "Follow a chain of variable assignments scattered through a long document (hops configurable)"

    def __init__(self, hops: int = 3, distractors: int = 12, max_distractor_hops: int | None = None) -> None:
        self.hops = check_int(hops, "hops", minimum=1)
        self.distractors = check_int(distractors, "distractors", minimum=0)
        # None (or 0): distractor chains as long as the asked one, at least 2 hops
        self.max_distractor_hops = (check_int(max_distractor_hops, "max_distractor_hops", minimum=1)
                                    if max_distractor_hops else max(self.hops, 2))

    def make_item(self, rng: random.Random, slot: ItemSlot) -> Item:
        lengths = [self.hops] + [rng.randint(1, self.max_distractor_hops) for _ in range(self.distractors)]
        names = _names(rng, sum(lengths))
        values = rng.sample(range(10, 1000), len(lengths))
        statements: list[tuple[str, str]] = []
        chains: list[list[str]] = []
        pos = 0
        for length, value in zip(lengths, values):
            chain = names[pos : pos + length]
            pos += length
            chains.append(chain)
            for a, b in zip(chain, chain[1:]):
                statements.append((a, b))
            statements.append((chain[-1], str(value)))
        target = chains[0]
        # Some distractor chains end by pointing into the asked chain instead of at a number:
        # their own answers change, the asked one does not.
        for chain in chains[1:]:
            if rng.random() < 0.3:
                statements = [(a, b) for a, b in statements if a != chain[-1]]
                statements.append((chain[-1], rng.choice(target)))
        rng.shuffle(statements)
        texts = [STATEMENT.format(lhs=a, rhs=b) + ("\n\n" if rng.random() < 0.3 else " ") for a, b in statements]
        units = task_filler(self.name, slot.seed).units(rng, slot.length_chars - sum(len(t) for t in texts))
        units, _ = scatter(rng, units, texts)
        context = "".join(units)
        return slot.item(
            question=QUESTION.format(var=target[0]),
            context=context,
            answer=str(values[0]),
            answer_type="exact",
            meta={"hops": self.hops, "variable": target[0], "chain": target, "distractors": self.distractors,
                  "statements": len(statements)},
        )

    def score(self, item: Item, prediction: str | None) -> float:
        """Exact match of the value (SQuAD normalization; "x = 5" and "Answer: 5" read as 5)."""
        return exact_match(prediction, item.answer)
