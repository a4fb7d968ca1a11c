"""Question phrasings and needle keys, each split into a training part and a held-out part.

The embedded root is trained on the ``train`` phrasings and on keys of random characters
and made-up words only; the eval tasks draw either part, so what a model does off its
training distribution can be measured (``sniah`` and ``chains`` take ``phrasing=`` and
``case=``, ``sniah`` takes ``keys=``):

- ``phrasing="canonical"``: the task's original question (RULER's for ``sniah``), a
  training phrasing;
- ``phrasing="train"`` / ``"heldout"``: one of the family's training / held-out phrasings;
- ``case="keep"`` / ``"mixed"``: the question as written, or lower-, upper- or
  title-cased at random;
- ``keys="words"`` (``sniah``'s default: real words, a vocabulary no training key uses)
  or ``"chars"`` (random letters and digits);
- ``facts="statements"`` (``chains``' default: ``q=a; c=5``), ``"sentences"`` (English
  fact sentences in the training templates: ``q equals a. Set c to 5.``) or
  ``"heldout_sentences"`` (in templates kept out of training).

Example::

    rng = random.Random(0)
    phrase(rng, "value", "heldout", section=12, var="q")   # e.g. 'What is the value of q in section 12?'
"""

from __future__ import annotations

import random
import string
from typing import Literal

from loopagent.errors import ConfigError

Family = Literal["needle", "value", "count"]
Split = Literal["canonical", "train", "heldout"]
Case = Literal["keep", "mixed"]
SPLITS: tuple[str, ...] = ("canonical", "train", "heldout")
CASES: tuple[str, ...] = ("keep", "mixed")

# {key}; the first training phrasing of each family is its canonical one.
_PHRASINGS: dict[str, dict[str, tuple[str, ...]]] = {
    "needle": {
        "train": (
            "What is the special magic number for {key} mentioned in the provided text? "
            "Answer with the number only.",
            "What is the special magic number for {key}?",
            "What is the magic number for {key}?",
            "Find the special magic number for {key}.",
            "Tell me the magic number for {key}.",
            "Which number is the special magic number for {key}?",
            "What magic number does the text give for {key}?",
            "The text mentions a special magic number for {key}. What is it?",
            "{key}: what is its special magic number?",
            "Give the special magic number of {key}.",
            "What's the magic number of {key}? Answer with the number only.",
            "Quick question: what is the special magic number for {key}?",
            "Search the document for the magic number for {key}.",
            "Regarding {key}, which magic number is stated?",
        ),
        "heldout": (
            "For {key}, what is the special magic number?",
            "Please report the magic number for {key}.",
            "Which magic number belongs to {key}?",
            "Look up the special magic number of {key} and answer with it.",
            "What special magic number is mentioned for {key} in the text?",
            "I need the magic number for {key}. What is it?",
        ),
    },
    "value": {
        "train": (
            "In section {section}, what is the value of {var}?",
            "In section {section}, what does {var} equal?",
            "What value does {var} take in section {section}?",
            "Find the value of {var} in section {section}.",
            "Section {section}: what is {var}?",
            "Resolve {var} in section {section}.",
            "Give the value of {var} from section {section}.",
            "What does {var} resolve to in section {section}?",
            "Quick question: in section {section}, what is {var} worth?",
            "Tell me the value of the variable {var} in section {section}.",
            "Following the chain in section {section}, what is the value of {var}?",
        ),
        "heldout": (
            "What is the value of {var} in section {section}?",
            "In section {section}, which digit is {var}?",
            "Section {section}: resolve the variable {var}.",
            "Please find what {var} equals in section {section}.",
            "What digit does {var} stand for in section {section}?",
        ),
    },
    "count": {
        "train": (
            "In sections {first} to {last}, how many times does {var} equal {digit}?",
            "How many sections from {first} to {last} have {var} equal to {digit}?",
            "Count the sections between {first} and {last} where {var} is {digit}.",
            "From section {first} through {last}, how often is {var} equal to {digit}?",
            "In sections {first} to {last}, in how many is {var} {digit}?",
            "Across sections {first} to {last}, count how many times {var} resolves to {digit}.",
            "How often does {var} equal {digit} in sections {first} to {last}?",
            "Sections {first} to {last}: how many give {var} the value {digit}?",
        ),
        "heldout": (
            "How many times does {var} equal {digit} in sections {first} to {last}?",
            "In sections {first} through {last}, count where {var} equals {digit}.",
            "Between sections {first} and {last}, how many times is {var} equal to {digit}?",
            "Count how often {var} is {digit} across sections {first} to {last}.",
        ),
    },
}


def phrasings(family: str, split: str) -> tuple[str, ...]:
    """The templates of one family and split (``canonical``: the first training one)."""
    if family not in _PHRASINGS:
        raise ConfigError(f"unknown question family {family!r}; choose one of {', '.join(_PHRASINGS)}")
    if split not in SPLITS:
        raise ConfigError(f"phrasing must be one of {', '.join(SPLITS)}, got {split!r}")
    templates = _PHRASINGS[family]
    return templates["train"][:1] if split == "canonical" else templates[split]


def phrase(rng: random.Random, family: str, split: str = "canonical", case: str = "keep", **fields: object) -> str:
    """A question of ``family`` in a phrasing drawn from ``split``, recased per ``case``."""
    templates = phrasings(family, split)
    # one template: no draw, so a canonical question leaves the caller's random stream as it was
    question = (templates[0] if len(templates) == 1 else rng.choice(templates)).format(**fields)
    return recase(rng, question, case)


def recase(rng: random.Random, text: str, case: str = "mixed") -> str:
    """``text`` as is (``keep``), or at random as is, lower-, upper- or title-cased (``mixed``)."""
    if case not in CASES:
        raise ConfigError(f"case must be one of {', '.join(CASES)}, got {case!r}")
    if case == "keep":
        return text
    how = rng.choice(("keep", "lower", "upper", "title"))
    if how == "lower":
        return text.lower()
    if how == "upper":
        return text.upper()
    if how == "title":
        return " ".join(w[:1].upper() + w[1:] for w in text.split(" "))
    return text


# -- needle keys ----------------------------------------------------------------------------------------------------

KEY_STYLES: tuple[str, ...] = ("words", "chars")
_KEY_CHARS = string.ascii_letters + string.digits


def char_key(rng: random.Random) -> str:
    """A key of random letters and digits, one to three groups joined by ``-`` (``"Xq7Lp"``,
    ``"k2-9TbW"``)."""
    groups = rng.choice((1, 1, 2, 3))
    return "-".join("".join(rng.choices(_KEY_CHARS, k=rng.randint(2, 8 if groups == 1 else 5)))
                    for _ in range(groups))


_ONSETS = ("b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
           "br", "cl", "dr", "gr", "pl", "st", "tr", "sk", "sh", "ch", "qu", "x", "y", "")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ea", "y")
_CODAS = ("", "", "", "n", "r", "l", "s", "t", "m", "k", "x", "nd", "st")


def made_up_word(rng: random.Random) -> str:
    """A pronounceable made-up word of 1-3 syllables (``"drovelk"``)."""
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(rng.randint(1, 3)))


def made_up_key(rng: random.Random) -> str:
    """A key in the ``"calm-river-123"`` shape from made-up words (``"trou-skeland-417"``)."""
    words = [made_up_word(rng) for _ in range(rng.choice((1, 2, 2, 3)))]
    if rng.random() < 0.6:
        words.append(str(rng.randrange(10, 10_000)))
    return "-".join(words)


# -- fact sentences -------------------------------------------------------------------------------------------------

# {a} is set to {b}: the statement "a=b" as English; {b} is a variable or a digit.
_FACT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "train": (
        "{a} is {b}.",
        "{a} equals {b}.",
        "The value of {a} is {b}.",
        "{a} is set to {b}.",
        "Set {a} to {b}.",
        "{a} takes the value {b}.",
        "We know that {a} is {b}.",
    ),
    "heldout": (
        "Let {a} be {b}.",
        "{a} has the value {b}.",
        "{a} is equal to {b}.",
        "Note that {a} equals {b}.",
    ),
}
FACT_STYLES: tuple[str, ...] = ("statements", "sentences", "heldout_sentences")


def fact_templates(split: str) -> tuple[str, ...]:
    """The fact-sentence templates of ``split`` (``train`` or ``heldout``)."""
    if split not in _FACT_TEMPLATES:
        raise ConfigError(f"fact templates are 'train' or 'heldout', got {split!r}")
    return _FACT_TEMPLATES[split]


def fact_sentence(rng: random.Random, statement: str, split: str = "train") -> str:
    """The statement ``"q=a"`` as a sentence in a template from ``split`` (``"q equals a."``)."""
    a, b = statement.split("=", 1)
    return rng.choice(fact_templates(split)).format(a=a, b=b)


def render_facts(rng: random.Random, statements: list[str], style: str = "statements") -> str:
    """A section's statements as written in a document: ``"q=a; c=5"`` or sentences."""
    if style not in FACT_STYLES:
        raise ConfigError(f"facts must be one of {', '.join(FACT_STYLES)}, got {style!r}")
    if style == "statements":
        return "; ".join(statements)
    split = "train" if style == "sentences" else "heldout"
    return " ".join(fact_sentence(rng, s, split) for s in statements)
