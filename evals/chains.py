"""Variable chains in sections: multi-hop questions where latent depth matters.

A document is a list of sections, one per line::

    Section 17: q=a; c=5; a=c; m=7; z=m; ...

Each section holds ``statements`` assignments over single-letter variables (each
defined once per section); a value is a digit or another variable. Resolving a
variable follows its chain to a digit: ``q -> a -> c -> 5`` is 3 hops. Questions:

- ``value``: "In section 17, what is the value of q?" (one section, ``hops`` hops)
- ``count``: "In sections 3 to 12, how many times does q equal 5?" (a batch over
  sections; every section in the range defines q)

``phrasing``, ``case`` and ``facts`` (statements, or English fact sentences in training or
held-out templates: ``Section 17: q equals a. Set c to 5. ...``) are described in
:mod:`loopagent.evals.phrasings`.

Small models read a statement as one token (see the embedded model's tokenizer),
so these sections are the child's native input: ``"q=a; c=5; ... ?q"``.
"""

from __future__ import annotations

import random
import string
from typing import Any

from loopagent.errors import ConfigError

from .base import Item, ItemSlot, Task, register
from .phrasings import FACT_STYLES, phrase, phrasings, recase, render_facts

NAMES = string.ascii_lowercase
DIGITS = string.digits


def make_section(rng: random.Random, statements: int, hops: int,
                 target: str | None = None) -> tuple[list[str], str, str]:
    """Statements of one section with a ``hops``-hop chain from ``target``.

    Returns (statements, target, value); the rest are distractor chains of 1-3 hops.
    """
    if not 1 <= hops <= statements:
        raise ConfigError(f"need 1 <= hops <= statements, got hops={hops}, statements={statements}")
    names = list(NAMES)
    rng.shuffle(names)
    if target is not None:
        names.remove(target)
        names.insert(0, target)
    chain_vars, rest = names[:hops], names[hops:]
    value = rng.choice(DIGITS)
    out = [f"{a}={b}" for a, b in zip(chain_vars, chain_vars[1:])] + [f"{chain_vars[-1]}={value}"]
    while len(out) < statements:
        length = min(rng.randint(1, 3), statements - len(out))
        links, rest = rest[:length], rest[length:]
        out += [f"{a}={b}" for a, b in zip(links, links[1:])] + [f"{links[-1]}={rng.choice(DIGITS)}"]
    rng.shuffle(out)
    return out, chain_vars[0], value


def resolve(statements: list[str], variable: str, max_hops: int = 64) -> tuple[str | None, int]:
    """Follow ``variable`` to a digit: (value, hops), (None, hops) if it does not resolve."""
    table = dict(s.split("=", 1) for s in statements)
    hops = 0
    while variable in table and hops < max_hops:
        variable = table[variable]
        hops += 1
        if variable in DIGITS:
            return variable, hops
    return None, hops


def pointer_steps(statements: list[str], variable: str, steps: int) -> list[str]:
    """Where ``variable``'s chain stands after 1..``steps`` lookups.

    Entry ``k - 1`` is the value reached after ``k`` lookups; it stays at the digit
    (or at a name with no statement) once the chain ends. The embedded child is trained
    to hold entry ``k - 1`` after ``k`` loops: one loop, one hop.

    Example::

        pointer_steps(["q=a", "a=c", "c=5"], "q", 4)   # ['a', 'c', '5', '5']
    """
    table = dict(s.split("=", 1) for s in statements)
    out = []
    for _ in range(steps):
        variable = table.get(variable, variable)
        out.append(variable)
    return out


def format_section(number: int, statements: list[str]) -> str:
    return f"Section {number}: " + "; ".join(statements)


@register
class ChainsTask(Task):
    """Multi-hop variable chains spread over a long document of sections."""

    name = "chains"
    description = "In section N, what is the value of v? (chains of `hops` links; exact match)"

    def __init__(self, hops: int | str = 4, statements: int = 8, kind: str = "value", count_span: int = 10,
                 phrasing: str = "canonical", case: str = "keep", facts: str = "statements") -> None:
        self.hops = [int(h) for h in str(hops).split(",")] if isinstance(hops, str) else [int(hops)]
        self.statements = int(statements)
        if kind not in ("value", "count"):
            raise ConfigError(f"kind must be 'value' or 'count', got {kind!r}")
        self.kind = kind
        self.count_span = int(count_span)
        phrasings(kind, phrasing)  # a bad split or case fails here, not at the first item
        recase(random.Random(0), "", case)
        if facts not in FACT_STYLES:
            raise ConfigError(f"facts must be one of {', '.join(FACT_STYLES)}, got {facts!r}")
        self.phrasing, self.case, self.facts = phrasing, case, facts

    def item_rng(self, slot: ItemSlot) -> random.Random:
        # this task's own seed format, older than ItemSlot's: the same seeds keep their items
        return random.Random(f"chains/{slot.seed}/{slot.length_chars}/{slot.index}")

    def make_item(self, rng: random.Random, slot: ItemSlot) -> Item:
        hops = rng.choice(self.hops)
        length_chars = slot.length_chars
        target_section = None
        sections: list[str] = []
        size = 0
        number = 0
        var = rng.choice(NAMES)
        # a typical line's length, from a fixed draw: the item's own random stream stays untouched
        approx = len(f"Section 999: {render_facts(random.Random(0), ['a=b'] * self.statements, self.facts)}") + 1
        total = max(1, length_chars // approx)
        if self.kind == "value":
            target_section = rng.randint(1, total)
        else:
            first = rng.randint(1, max(1, total - self.count_span + 1))
            span = range(first, min(total, first + self.count_span - 1) + 1)
        values: dict[int, str] = {}
        while size < length_chars or number < total:
            number += 1
            in_focus = (self.kind == "value" and number == target_section) or (self.kind == "count" and number in span)
            if in_focus:
                statements, _, value = make_section(rng, self.statements, hops, target=var)
                values[number] = value
            else:
                statements, _, _ = make_section(rng, self.statements, rng.randint(1, 3))
            line = f"Section {number}: {render_facts(rng, statements, self.facts)}"
            sections.append(line)
            size += len(line) + 1
            if number >= total and size >= length_chars:
                break
        context = "\n".join(sections)
        meta: dict[str, Any] = {"hops": hops, "sections": number, "variable": var, "phrasing": self.phrasing,
                                "case": self.case, "facts": self.facts}
        if self.kind == "value":
            question = phrase(rng, "value", self.phrasing, self.case, section=target_section, var=var)
            answer: Any = values[target_section]  # type: ignore[index]
            meta["section"] = target_section
        else:
            digit = rng.choice(DIGITS)
            question = phrase(rng, "count", self.phrasing, self.case, first=span.start, last=span.stop - 1, var=var,
                              digit=digit)
            answer = str(sum(1 for s in span if values.get(s) == digit))
            meta.update(first=span.start, last=span.stop - 1, digit=digit)
        return slot.item(question=question, context=context, answer=answer, answer_type="exact", meta=meta,
                         item_id=f"chains-{self.kind}-h{hops}-s{slot.seed}-l{length_chars}-{slot.index}")

    def score(self, item: Item, prediction: str | None) -> float:
        if prediction is None:
            return 0.0
        return float(prediction.strip().strip(".'\"") == str(item.answer))
