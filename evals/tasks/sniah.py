"""``sniah``: RULER's single needle in a haystack.

One sentence "The special magic number for <key> is <7-digit number>." sits at a seeded depth
in prose filler; the question asks for the number. ``distractors=k`` adds ``k`` needles for
other keys (RULER's multi-key variant), so finding *a* magic number is not enough.

Off the training distribution of the embedded root (see :mod:`loopagent.evals.phrasings`):
``keys="words"`` (the default; a vocabulary no training key uses) or ``"chars"`` (random
letters and digits), ``phrasing="canonical"`` (RULER's question), ``"train"`` or
``"heldout"``, and ``case="keep"`` or ``"mixed"``.
"""

from __future__ import annotations

import random
import re

from loopagent.errors import ConfigError
from loopagent.evals.base import Item, ItemSlot, Task, register
from loopagent.evals.phrasings import KEY_STYLES, char_key, phrase, phrasings, recase
from loopagent.evals.scorers import exact_match
from loopagent.evals.tasks._common import scatter, task_filler
from loopagent.validation import check_int

_KEY_ADJECTIVES = [
    "amber", "brisk", "candid", "dusky", "eager", "fabled", "gilded", "hollow", "ivory", "jolly",
    "keen", "lucid", "mellow", "nimble", "opal", "placid", "quaint", "russet", "silent", "tawny",
    "umber", "vivid", "wistful", "zesty", "azure", "bold", "crimson", "distant", "elder", "frosty",
]
_KEY_NOUNS = [
    "falcon", "lantern", "meadow", "harbor", "quarry", "thistle", "compass", "glacier", "orchid",
    "canyon", "beacon", "willow", "sparrow", "cobalt", "ember", "juniper", "marble", "pebble",
    "saffron", "tundra", "violet", "walnut", "anchor", "bramble", "cinder", "dune", "fjord", "grove",
]

#: Every word a ``keys="words"`` key is made of: the embedded root never trained on one.
KEY_VOCABULARY = frozenset(_KEY_ADJECTIVES + _KEY_NOUNS)

NEEDLE = "The special magic number for {key} is {value}."
QUESTION = phrasings("needle", "canonical")[0]
_SEVEN_DIGITS = re.compile(r"(?<!\d)\d{7}(?!\d)")


def needle_key(rng: random.Random) -> str:
    """A needle key in the task's style, e.g. ``"calm-river-123"`` (three draws from ``rng``)."""
    return f"{rng.choice(_KEY_ADJECTIVES)}-{rng.choice(_KEY_NOUNS)}-{rng.randrange(100, 1000)}"


@register
class SNIAH(Task):
    """RULER-style single needle: find the 7-digit value stated for one key."""

    name = "sniah"
    description = "RULER single needle: a 7-digit 'special magic number' for a key, hidden at a seeded depth in prose"

    def __init__(self, distractors: int = 0, keys: str = "words", phrasing: str = "canonical",
                 case: str = "keep") -> None:
        self.distractors = check_int(distractors, "distractors", minimum=0)
        if keys not in KEY_STYLES:
            raise ConfigError(f"keys must be one of {', '.join(KEY_STYLES)}, got {keys!r}")
        phrasings("needle", phrasing)  # a bad split fails here, not at the first item
        recase(random.Random(0), "", case)
        self.keys, self.phrasing, self.case = keys, phrasing, case

    def make_item(self, rng: random.Random, slot: ItemSlot) -> Item:
        make_key = needle_key if self.keys == "words" else char_key
        keys = set()
        while len(keys) < 1 + self.distractors:
            keys.add(make_key(rng))
        keys = sorted(keys)
        rng.shuffle(keys)
        values: list[str] = []
        while len(values) < len(keys):
            v = str(rng.randrange(1_000_000, 10_000_000))
            if v not in values:
                values.append(v)
        needles = [NEEDLE.format(key=k, value=v) + " " for k, v in zip(keys, values)]
        depth = rng.random()
        positions = [depth] + [rng.random() for _ in keys[1:]]
        units = task_filler(self.name, slot.seed).units(rng, slot.length_chars - sum(len(s) for s in needles))
        units, _ = scatter(rng, units, needles, positions)
        context = "".join(units)
        return slot.item(
            question=phrase(rng, "needle", self.phrasing, self.case, key=keys[0]),
            context=context,
            answer=values[0],
            answer_type="exact",
            meta={"key": keys[0], "depth": round(depth, 4), "needle_offset": context.index(needles[0]),
                  "distractors": self.distractors, "keys": self.keys, "phrasing": self.phrasing, "case": self.case},
        )

    def score(self, item: Item, prediction: str | None) -> float:
        """Exact match of the number. A sentence around it is accepted when the number is the
        only 7-digit number it names (RULER's substring rule would credit a list of guesses)."""
        if exact_match(prediction, item.answer):
            return 1.0
        found = set(_SEVEN_DIGITS.findall(prediction or ""))
        return float(found == {str(item.answer)})
