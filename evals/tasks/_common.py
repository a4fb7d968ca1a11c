"""Shared pieces of the generators: filler prose, cutting to length, scattering facts in it.

Item ids, per-item randomness and the request checks live in :mod:`loopagent.evals.base`
(:class:`~loopagent.evals.base.ItemSlot`, :meth:`~loopagent.evals.base.Task.generate`).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import random

__all__ = [
    "Filler",
    "task_filler",
    "fit_to_length",
    "scatter",
]


# --- filler prose --------------------------------------------------------------------------
# Word lists for sentences that read like ordinary prose and carry no facts the tasks ask
# about: no digits, no "=" signs, no "special magic number".

_SUBJECTS = [
    "The old gardener", "A quiet neighbour", "The committee", "Our small team", "The traveller",
    "A young painter", "The river guide", "The night baker", "My grandmother", "The librarian",
    "A retired sailor", "The village choir", "Every visitor", "The shopkeeper", "A curious child",
    "The weather station", "The orchestra", "A tired cyclist", "The harbour master", "The class",
    "Her brother", "The translator", "A wandering musician", "The museum guard", "The farmer",
    "The new tenant", "An elderly poet", "The postman", "The film crew", "A local historian",
    "The ferry captain", "The carpenter", "Most of the guests", "The research group", "The mayor",
]
_VERBS = [
    "walked slowly along", "talked for hours about", "kept a careful record of", "painted",
    "argued cheerfully about", "wrote a long letter about", "returned to", "quietly repaired",
    "dreamed about", "took photographs of", "read aloud from", "made a small map of",
    "sang softly near", "planted flowers beside", "remembered", "complained about", "admired",
    "cleaned", "studied", "sketched", "waited patiently by", "laughed about", "visited",
    "collected stories about", "described", "measured", "searched for", "wandered past",
]
_OBJECTS = [
    "the narrow bridge", "the orchard", "the harbour", "the crowded market", "the stone wall",
    "the library garden", "the frozen lake", "the lighthouse", "the empty station",
    "the mountain path", "the blue door", "the wooden pier", "the bakery window",
    "the winter festival", "the abandoned mill", "the tall hedge", "the town square",
    "the little chapel", "the vineyard", "the old railway", "the copper kettle",
    "the meadow", "the bell tower", "the fishing boats", "the garden shed", "the hill fort",
    "the reading room", "the canal", "the spice shop", "the forest edge", "the salt marsh",
]
_TAILS = [
    "before the rain came", "while the kettle boiled", "as the light faded", "after dinner",
    "without saying much", "in the early morning", "for no particular reason",
    "with great patience", "during the long summer", "as the bells rang", "once again",
    "under a grey sky", "when the market closed", "with a borrowed umbrella", "all afternoon",
    "on the way home", "despite the cold wind", "while everyone else slept",
    "with a cup of tea", "before anyone noticed", "as the tide went out", "late at night",
]
_OPENERS = [
    "", "", "", "", "Later, ", "Meanwhile, ", "In the end, ", "Sometimes ", "Of course, ",
    "Afterwards, ", "Somehow ", "That year, ", "Once, ", "Still, ",
]
_REMARKS = [
    "Nobody seemed to mind.", "It was, by all accounts, a pleasant day.",
    "The conversation drifted to other things.", "Everyone agreed it could wait.",
    "The smell of bread filled the street.", "A dog barked somewhere in the distance.",
    "It rained a little, then stopped.", "Nothing much happened after that.",
    "The clouds moved quickly over the hills.", "Someone hummed an old tune.",
    "The evening was calm and mild.", "There was still plenty of time.",
]


def _sentence(rng: random.Random) -> str:
    if rng.random() < 0.12:
        return rng.choice(_REMARKS)
    opener = rng.choice(_OPENERS)
    subject = rng.choice(_SUBJECTS)
    if opener:
        subject = subject[0].lower() + subject[1:]
    return f"{opener}{subject} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}."


class Filler:
    """Natural-ish prose from word lists: a pool of distinct sentences (built once per seed)
    sampled into paragraphs. Sampling a pool with ``random.choices`` keeps 10 M characters
    well under a second."""

    POOL = 4096

    def __init__(self, seed: str) -> None:
        rng = random.Random(f"filler|{seed}")
        pool = {_sentence(rng) for _ in range(self.POOL)}
        self.sentences = sorted(pool)
        self.mean = sum(len(s) + 1 for s in self.sentences) / len(self.sentences)

    def units(self, rng: random.Random, chars: int) -> list[str]:
        """Sentences (each ending in a space or a paragraph break) totalling about ``chars``."""
        if chars <= 0:
            return []
        k = int(chars / self.mean * 1.1) + 4
        picks = rng.choices(self.sentences, k=k)
        breaks = rng.choices((" ", " ", " ", " ", " ", "\n\n"), k=k)
        units = [s + b for s, b in zip(picks, breaks)]
        return fit_to_length(units, chars)

    def text(self, rng: random.Random, chars: int) -> str:
        return "".join(self.units(rng, chars))


@functools.lru_cache(maxsize=16)
def task_filler(task: str, seed: int) -> Filler:
    """The filler of one task and seed, built once for all of a request's items (it draws from
    its own generator, never from an item's, so sharing it changes no item)."""
    return Filler(f"{task}|{seed}")


def fit_to_length(units: list[str], chars: int) -> list[str]:
    """The shortest prefix of ``units`` reaching ``chars`` characters (all of them if short)."""
    totals = list(itertools.accumulate(len(u) for u in units))
    cut = bisect.bisect_left(totals, chars)
    return units[: cut + 1]


def scatter(rng: random.Random, units: list[str], inserts: list[str],
            positions: list[float] | None = None) -> tuple[list[str], list[int]]:
    """Insert ``inserts`` among ``units`` at seeded (or given, 0..1) relative positions.
    Returns the new list and the index each insert ended up at."""
    n = len(units)
    if positions is None:
        positions = [rng.random() for _ in inserts]
    slots = [min(n, int(p * (n + 1))) for p in positions]
    order = sorted(range(len(inserts)), key=lambda i: (slots[i], i))
    out: list[str] = []
    where = [0] * len(inserts)
    prev = 0
    for i in order:
        out.extend(units[prev : slots[i]])
        prev = max(prev, slots[i])
        where[i] = len(out)
        out.append(inserts[i])
    out.extend(units[prev:])
    return out, where
