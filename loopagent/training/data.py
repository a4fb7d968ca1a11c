"""Training data of the embedded models, generated from the seeded task families.

Child role: resolve a variable in one section of statements (``"q=a; c=5; a=c ?q"``
-> ``"5"``), one hop per loop. A training sequence asks about several variables of
its section and carries a target for every loop depth (latent-step supervision):
after ``k`` loops the answer position holds the chain's value after ``k`` lookups
(``a``, then ``c``, then ``5``), so more loops resolve longer chains. The first
query is exactly what an ``llm_query`` sends.

Root role: read a question, write the REPL program for its family, read the REPL
output, answer with ``FINAL('...')``. The programs are the ones
:func:`root_program` writes, so the training data and the demo agree.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from loopagent import prompts
from loopagent.evals.chains import DIGITS, NAMES, make_section, pointer_steps
from loopagent.evals.phrasings import char_key, made_up_key, phrase, recase, render_facts
from loopagent.evals.tasks.sniah import KEY_VOCABULARY, NEEDLE  # noqa: F401 - NEEDLE: the sentence the root finds

IGNORE = -100

#: Every "x=y" statement and "?x" query is one token of the child's tokenizer.
CHILD_EXTRA_TOKENS = [f"{a}={b}" for a in NAMES for b in NAMES + DIGITS] + [f"?{a}" for a in NAMES]

#: The child reads "statements ?x" and answers at the query token: no turn markers.
CHILD_CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'assistant' -%}{{ m['content'] }}<|eos|>"
    "{%- else -%}{{ m['content'] }}{%- endif -%}{%- endfor -%}"
)

#: The root sees the question and REPL outputs, never the long system prompt (a small
#: model learns the REPL from its training programs); outputs are cut to 400 characters.
ROOT_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|>{{ m['content'][:400] }}<|eos|>"
    "{% elif m['role'] == 'assistant' %}<|assistant|>{{ m['content'] }}<|eos|>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

@dataclass
class Example:
    """Token ids and next-token labels (``labels[i]`` is predicted at ``i - 1``).

    ``depth_labels`` (child): one label row per loop depth instead of ``labels``.
    """

    input_ids: list[int]
    labels: list[int]
    depth_labels: list[list[int]] | None = None


# -- child ----------------------------------------------------------------------------------------


def child_prompt(statements: Sequence[str], var: str, facts: str = "statements",
                 rng: random.Random | None = None) -> str:
    """What the root's program sends: a section as the document writes it (``facts``, see
    :func:`~loopagent.evals.phrasings.render_facts`) and a query."""
    return render_facts(rng or random.Random(0), list(statements), facts) + f" ?{var}"


def _section_pieces(rng: random.Random, stmts: Sequence[str], facts: str) -> list[str]:
    """A section as the document writes it, in pieces that tokenize apart: statements
    (``"q=a"``, ``"; c=5"``) or sentences (``"q equals a."``, ``" Set c to 5."``)."""
    if facts == "statements":
        return [("; " if i else "") + s for i, s in enumerate(stmts)]
    return [(" " if i else "") + render_facts(rng, [s], facts) for i, s in enumerate(stmts)]


def child_example(
    tok: Any,
    rng: random.Random,
    *,
    statements: Sequence[int] = (8,),
    hops: Sequence[int] = (1, 2, 3, 4),
    depths: int = 8,
    queries: int = 4,
    facts: str = "statements",
) -> Example:
    """One section, then ``queries`` variables asked (the chain's head first).

    Layout::

        q=a; c=5; a=c ?q ?a ?c 5<eos>

    Each query token predicts its variable's value; after ``k`` loops the target is
    where the chain stands after ``k`` lookups (:func:`pointer_steps`), so row ``k - 1``
    of ``depth_labels`` is ``a``, ``c``, ``5``, ``5``... at ``?q``. The last query is
    followed by a one-token reply and the end token, as a generated reply would be.
    ``facts="sentences"`` writes the statements as English fact sentences
    (``q equals a. Set c to 5. ...``, :func:`~loopagent.evals.phrasings.render_facts`).
    """
    n = rng.choice(list(statements))
    stmts, head, _ = make_section(rng, n, rng.choice([h for h in hops if h <= n]))
    others = [s.split("=")[0] for s in stmts if s.split("=")[0] != head]
    rng.shuffle(others)
    asked = [head] + others[: queries - 1]
    piece = _child_pieces(tok)

    ids: list[int] = []
    for text in _section_pieces(rng, stmts, facts):
        ids += piece(text)
    rows = [[IGNORE] * len(ids) for _ in range(depths)]
    for var in asked:
        ids += piece(f" ?{var}")
        steps = pointer_steps(stmts, var, depths)
        for row, value in zip(rows, steps):
            row += [IGNORE] * (len(ids) - len(row)) + [piece(value)[0]]
    # The last query's reply, then the end token. The reply is where the chain stands at a
    # random depth, so the end follows any one-token reply, also one given with too few loops.
    ids.append(rng.choice(rows)[-1])
    for row in rows:
        row.append(tok.eos_token_id)
    ids.append(tok.eos_token_id)
    return Example(ids, rows[-1], depth_labels=rows)


@lru_cache(maxsize=8)
def _child_pieces(tok: Any) -> Any:
    """A memoized encoder: a section is a few hundred distinct strings, not worth a tokenizer call each."""

    @lru_cache(maxsize=4096)
    def encode(text: str) -> tuple[int, ...]:
        return tuple(tok(text, add_special_tokens=False)["input_ids"])

    def piece(text: str) -> list[int]:
        return list(encode(text))

    return piece


# -- root ---------------------------------------------------------------------------------------------

#: The root's question families and how often each is drawn in training.
FAMILIES = {"needle": 0.25, "value": 0.27, "count": 0.27, "other": 0.21}
#: What the root's training program for a question outside its families prints.
LOOK_CHARS = 100


@dataclass(frozen=True)
class RootQuestion:
    """A question the root is trained on: its family, the fields its program copies, what the
    program prints, and the final answer."""

    question: str
    family: str
    fields: dict[str, Any]
    output: str
    answer: str

    @property
    def program(self) -> str:
        return root_program(self.family, **self.fields)


def root_program(family: str, **fields: Any) -> str:
    """The REPL program the root writes for a question of ``family``.

    A needle program lists every magic number with its key, and the root answers with the one
    whose key the question names (a key of any characters, asked in any case, is never copied
    into code); a question outside the families gets a look at the context, a valid program
    rather than a guess.

    Example::

        root_program("value", section=12, var="q")
    """
    if family == "needle":
        return "import re\nprint(re.findall(r'magic number for (\\S+) is (\\d+)', context))"
    head = "import re\ns = dict(re.findall(r'Section (\\d+): (.*)', context))\n"
    if family == "value":
        return head + f"print(llm_query(s['{fields['section']}'] + ' ?{fields['var']}'))"
    if family == "count":
        return head + (f"v = llm_batch([s[str(i)] + ' ?{fields['var']}' for i in range({fields['first']}, "
                       f"{fields['last']} + 1)])\nprint(sum(x.strip() == '{fields['digit']}' for x in v))")
    if family == "other":
        # str(): a look that runs on any context, a dict or list of documents too
        return f"print(len(context))\nprint(str(context)[:{LOOK_CHARS}])"
    raise ValueError(f"unknown family {family!r}")


def root_turns(q: RootQuestion) -> list[dict[str, str]]:
    """A whole root conversation: program, REPL output, final answer."""
    return [
        {"role": "user", "content": q.question},
        {"role": "assistant", "content": f"```repl\n{q.program}\n```"},
        {"role": "user", "content": prompts.repl_feedback([q.output])},
        {"role": "assistant", "content": f"FINAL('{q.answer}')"},
    ]


def training_key(rng: random.Random) -> str:
    """A needle key for training: random characters or made-up words, never a word of the
    ``sniah`` task's key vocabulary (those stay held out)."""
    while True:
        key = char_key(rng) if rng.random() < 0.5 else made_up_key(rng)
        if not any(part.lower() in KEY_VOCABULARY for part in key.split("-")):
            return key


def random_root_question(rng: random.Random, split: str = "train", case: str = "mixed",
                         families: Sequence[str] | None = None) -> RootQuestion:
    """A random question of one family in a phrasing from ``split``, with what its program
    prints and the answer. Keys are :func:`training_key` s; ``split="heldout"`` keeps the
    training keys (the eval tasks hold out key vocabularies themselves)."""
    family = rng.choice(list(families)) if families else rng.choices(list(FAMILIES), list(FAMILIES.values()))[0]
    if family == "needle":
        key = training_key(rng)
        value = str(rng.randint(1_000_000, 9_999_999))
        # the needle among 0-3 others (RULER's multi-key variant), or none found
        others = [(training_key(rng), str(rng.randint(1_000_000, 9_999_999)))
                  for _ in range(rng.choice((0, 0, 1, 2, 3)))]
        found = [] if rng.random() < 0.05 else [(key, value)]
        listed = found + [(k, v) for k, v in others if k.lower() != key.lower()]
        rng.shuffle(listed)
        question = phrase(rng, "needle", split, case, key=key)
        return RootQuestion(question, family, {}, f"{listed!r}\n", value if found else "not found")
    if family == "value":
        # a child given too few loops replies with a variable name: the root passes it on as is
        value = rng.choice(DIGITS) if rng.random() < 0.8 else rng.choice(NAMES)
        section, var = _section_number(rng), rng.choice(NAMES)
        question = phrase(rng, "value", split, case, section=section, var=var)
        return RootQuestion(question, family, {"section": section, "var": var}, f"{value}\n", value)
    if family == "count":
        first = _section_number(rng)
        last = first + rng.randint(1, 19)
        count = str(rng.randint(0, min(9, last - first + 1)))
        fields = {"first": first, "last": last, "var": rng.choice(NAMES), "digit": rng.choice(DIGITS)}
        return RootQuestion(phrase(rng, "count", split, case, **fields), family, fields, f"{count}\n", count)
    question = recase(rng, _other_question(rng), case)
    look = _look(rng)
    return RootQuestion(question, family, {}, f"{len(look) * rng.randint(50, 5000)}\n{look[:LOOK_CHARS]}\n",
                        "not found")


_WH = ("Who", "What", "Which", "Where", "When", "Why", "How")
_NOUNS = ("letter", "author", "company", "river", "report", "city", "function", "meeting", "list", "user",
          "file", "character", "price", "date", "team", "book", "error", "message", "village", "answer",
          "record", "entry", "tag", "class", "module", "painter", "station", "product", "review", "topic")
_VERBS = ("wrote", "signed", "mentioned", "sent", "called", "lost", "visited", "changed", "returned", "built",
          "founded", "imported", "posted", "defined", "joined")
_BASE_VERBS = ("write", "sign", "mention", "send", "call", "lose", "visit", "change", "return", "build")
#: Closing instructions of other benchmarks' kind, in wordings of our own: the eval tasks'
#: questions (``oolong``, ``codeqa``, ``multihop``, ``browsecomp``) stay unseen.
_INSTRUCTIONS = ("Reply with the number alone.", "Respond with just one word.", "Use the format 'Result: <{noun}>'.",
                 "Return only the letter.", "State the {noun} and nothing else.", "Be brief.",
                 "Write your reply as '{Noun}: <value>'.", "Pick one option.", "Explain in one sentence.",
                 "If there is none, say so.", "Output a single integer.", "Think step by step, then reply.")
_PREAMBLES = ("The context is a collection of {noun}s.", "Each line of the data is one {noun} with its {other}.",
              "The document lists {noun}s like '{example}' and '{example2}'.", "You are given {n} {noun}s.",
              "Below, every {noun} has a {other} and an id such as {ident}.",
              "The text mixes {noun}s, {other}s and notes written in {year}.",
              "Consider the {noun}s in the file `{module}`.")


def _other_question(rng: random.Random) -> str:
    """A question of none of the root's families (free text, other benchmarks' styles): short,
    or a preamble, a question with names, numbers, ids or code, answer options and an instruction,
    up to a few hundred characters, so a long or odd question still gets a valid program."""
    noun, other = rng.sample(_NOUNS, 2)
    if rng.random() < 0.35:
        return _short_question(rng, noun, other)
    fields = {"noun": noun, "Noun": noun.title(), "other": other, "n": rng.randint(2, 5000),
              "year": rng.randint(1500, 2030), "ident": _ident(rng), "module": _module(rng),
              "example": _example(rng), "example2": _example(rng)}
    parts = [p.format(**fields) for p in rng.sample(_PREAMBLES, rng.choice((0, 1, 1, 2)))]
    parts.append(_long_question(rng, fields))
    text = " ".join(parts)
    if rng.random() < 0.4:
        choices = [rng.choice((_ident(rng), _word(rng), str(rng.randint(0, 9999)), repr(_word(rng)), "None"))
                   for _ in range(rng.choice((2, 3, 4, 5)))]
        style = rng.randrange(3)
        text += "".join(f"\n({chr(65 + i)}) {c}" if style == 0 else f"\n{chr(65 + i)}. {c}" if style == 1
                        else f"\n- {c}" for i, c in enumerate(choices))
    if rng.random() < 0.6:
        text += ("\n" if rng.random() < 0.3 else " ") + rng.choice(_INSTRUCTIONS).format(**fields)
    return text


def _short_question(rng: random.Random, noun: str, other: str) -> str:
    form = rng.randrange(6)
    if form == 0:
        return f"{rng.choice(_WH)} {rng.choice(_VERBS)} the {noun}?"
    if form == 1:
        return f"What is the {noun} of the {other}?"
    if form == 2:
        return f"How many {noun}s are in the {other}?"
    if form == 3:
        return f"Summarize the {noun}."
    if form == 4:
        return f"Which {noun} {rng.choice(_VERBS)} the {other} first? Give its name."
    return f"{rng.choice(_WH)} did the {noun} {rng.choice(_BASE_VERBS)} the {other}?"


def _long_question(rng: random.Random, f: dict[str, Any]) -> str:
    name = f"{_word(rng).title()} {_word(rng).title()}"
    form = rng.randrange(8)
    if form == 0:
        return f"Which {f['noun']} was {rng.choice(_VERBS)} by {name} in {f['year']}?"
    if form == 1:
        return f"What is the {f['other']} of the {f['noun']} whose id is {f['ident']}?"
    if form == 2:
        return f"How often does the {f['noun']} '{_word(rng)}' appear, compared with '{_word(rng)}'?"
    if form == 3:
        return f"In `{f['module']}`, what does `{_ident(rng)}` {rng.choice(_BASE_VERBS)} when given {f['n']}?"
    if form == 4:
        return (f"A {f['noun']} was {rng.choice(_VERBS)} in {f['year']} by someone from {_word(rng).title()}. "
                f"In which {f['other']} is it kept?")
    if form == 5:
        return f"What is the value of {f['ident']} after every {f['noun']} is applied? Follow each step."
    if form == 6:
        return f"List every {f['noun']} that {rng.choice(_VERBS)} a {f['other']} more than {f['n']} times."
    return f"{rng.choice(_WH)} {rng.choice(_VERBS)} the {f['noun']} that {name} {rng.choice(_VERBS)}?"


def _word(rng: random.Random) -> str:
    return "".join(rng.choice("aeiou" if i % 2 else "bcdfghklmnprstvz") for i in range(rng.randint(3, 8)))


def _ident(rng: random.Random) -> str:
    return rng.choice((f"{_word(rng)[:2]}{rng.randint(0, 999)}", f"{_word(rng)}_{_word(rng)}", f"{_word(rng)}()",
                       f"#{rng.randint(1, 99999)}"))


def _module(rng: random.Random) -> str:
    return ".".join(_word(rng) for _ in range(rng.randint(1, 3)))


def _example(rng: random.Random) -> str:
    return rng.choice((f"{_word(rng)[:2]}{rng.randint(0, 99)} = {rng.randint(0, 9)}", f"{_word(rng)}: {_word(rng)}",
                       f"{_word(rng).title()} {rng.choice(_VERBS)} {rng.randint(1, 99)}"))


def _look(rng: random.Random) -> str:
    """The head of some context: prose, sections or code."""
    kind = rng.randrange(3)
    if kind == 0:
        return " ".join(f"The {rng.choice(_NOUNS)} {rng.choice(_VERBS)} the {rng.choice(_NOUNS)}." for _ in range(12))
    if kind == 1:
        return "\n".join(f"Section {i}: " + "; ".join(make_section(rng, 6, 2)[0]) for i in range(1, 9))
    return "\n".join(f"def {rng.choice(_NOUNS)}_{i}(x):\n    return x + {i}" for i in range(10))


def _section_number(rng: random.Random) -> int:
    """1 to 5 digits, each length equally often: the root copies numbers it has seen every
    length of (a 1M-character document has about 19,000 sections, a 5M one 94,000)."""
    return rng.randint(1, 10 ** rng.randint(1, 5) - 1)


def root_example(tok: Any, rng: random.Random) -> Example:
    """One root conversation, labels on the assistant turns only."""
    messages = root_turns(random_root_question(rng))
    ids: list[int] = []
    labels: list[int] = []
    user, asst, eos = (tok.convert_tokens_to_ids(t) for t in ("<|user|>", "<|assistant|>", "<|eos|>"))
    for m in messages:
        content = tok(m["content"][:400] if m["role"] == "user" else m["content"],
                      add_special_tokens=False)["input_ids"]
        if m["role"] == "user":
            piece = [user] + content + [eos]
            ids += piece
            labels += [IGNORE] * len(piece)
        else:
            ids += [asst]
            labels += [IGNORE]
            ids += content + [eos]
            labels += content + [eos]
    return Example(ids, labels)


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors: input_ids, labels (next-token targets), attention_mask."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    batch: dict[str, Any] = {}
    if examples[0].depth_labels is not None:
        depths = len(examples[0].depth_labels)
        depth_labels = torch.full((depths, len(examples), width), IGNORE, dtype=torch.long)
        for row, e in enumerate(examples):
            depth_labels[:, row, : len(e.input_ids)] = torch.tensor(e.depth_labels)
        batch["depth_labels"] = depth_labels
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, **batch}
