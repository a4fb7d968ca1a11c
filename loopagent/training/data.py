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
import string
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from loopagent import prompts
from loopagent.evals.chains import DIGITS, NAMES, make_section, pointer_steps
from loopagent.evals.tasks.sniah import NEEDLE, needle_key  # noqa: F401 - NEEDLE: the sentence the root finds

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

# The short form, and the RULER-style form of the sniah eval task.
NEEDLE_QUESTIONS = (
    "What is the special magic number for {key}?",
    "What is the special magic number for {key} mentioned in the provided text? Answer with the number only.",
)
VALUE_QUESTION = "In section {section}, what is the value of {var}?"
COUNT_QUESTION = "In sections {first} to {last}, how many times does {var} equal {digit}?"
_KEY_WORDS = ("amber", "basil", "cobalt", "delta", "ember", "fjord", "granite", "harbor", "indigo", "juniper",
              "kestrel", "lumen", "maple", "nectar", "onyx", "pepper", "quartz", "raven", "saffron", "tundra",
              "umber", "velvet", "willow", "xenon", "yarrow", "zephyr")


@dataclass
class Example:
    """Token ids and next-token labels (``labels[i]`` is predicted at ``i - 1``).

    ``depth_labels`` (child): one label row per loop depth instead of ``labels``.
    """

    input_ids: list[int]
    labels: list[int]
    depth_labels: list[list[int]] | None = None


# -- child ----------------------------------------------------------------------------------------


def child_prompt(statements: Sequence[str], var: str) -> str:
    """What the root's program sends: a section's statements and a query."""
    return "; ".join(statements) + f" ?{var}"


def child_example(
    tok: Any,
    rng: random.Random,
    *,
    statements: Sequence[int] = (8,),
    hops: Sequence[int] = (1, 2, 3, 4),
    depths: int = 8,
    queries: int = 4,
) -> Example:
    """One section, then ``queries`` variables asked (the chain's head first).

    Layout::

        q=a; c=5; a=c ?q ?a ?c 5<eos>

    Each query token predicts its variable's value; after ``k`` loops the target is
    where the chain stands after ``k`` lookups (:func:`pointer_steps`), so row ``k - 1``
    of ``depth_labels`` is ``a``, ``c``, ``5``, ``5``... at ``?q``. The last query is
    followed by a one-token reply and the end token, as a generated reply would be.
    """
    n = rng.choice(list(statements))
    stmts, head, _ = make_section(rng, n, rng.choice([h for h in hops if h <= n]))
    others = [s.split("=")[0] for s in stmts if s.split("=")[0] != head]
    rng.shuffle(others)
    asked = [head] + others[: queries - 1]
    piece = _child_pieces(tok)

    ids: list[int] = []
    for i, statement in enumerate(stmts):
        ids += piece(("; " if i else "") + statement)
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


def root_program(question: str) -> str | None:
    """The REPL program the root writes for a question of a trained family (None otherwise)."""
    import re

    if m := re.fullmatch(r"What is the special magic number for (\S+?)"
                         r"(\?| mentioned in the provided text\? Answer with the number only\.)", question):
        return f"import re\nh = re.findall(r'magic number for {m[1]} is (\\d+)', context)\nprint(h)"
    head = "import re\ns = dict(re.findall(r'Section (\\d+): (.*)', context))\n"
    if m := re.fullmatch(r"In section (\d+), what is the value of ([a-z])\?", question):
        return head + f"print(llm_query(s['{m[1]}'] + ' ?{m[2]}'))"
    if m := re.fullmatch(r"In sections (\d+) to (\d+), how many times does ([a-z]) equal (\d)\?", question):
        return head + (f"v = llm_batch([s[str(i)] + ' ?{m[3]}' for i in range({m[1]}, {m[2]} + 1)])\n"
                       f"print(sum(x.strip() == '{m[4]}' for x in v))")
    return None


def root_turns(question: str, output: str, answer: str) -> list[dict[str, str]]:
    """A whole root conversation: program, REPL output, final answer."""
    program = root_program(question)
    assert program is not None, question
    return [
        {"role": "user", "content": question},
        {"role": "assistant", "content": f"```repl\n{program}\n```"},
        {"role": "user", "content": prompts.repl_feedback([output])},
        {"role": "assistant", "content": f"FINAL('{answer}')"},
    ]


def _needle_key(rng: random.Random) -> str:
    """Keys in the styles of the demo ("amber-qxz") and of the sniah task ("calm-river-123")."""
    if rng.random() < 0.5:
        return rng.choice(_KEY_WORDS) + "-" + "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 6)))
    return needle_key(rng)


def random_root_question(rng: random.Random) -> tuple[str, str, str]:
    """(question, REPL output the program prints, final answer) for a random family."""
    family = rng.choice(("needle", "value", "count"))
    if family == "needle":
        key = _needle_key(rng)
        value = str(rng.randint(1_000_000, 9_999_999))
        found = [value] if rng.random() < 0.95 else []
        return rng.choice(NEEDLE_QUESTIONS).format(key=key), f"{found!r}\n", value if found else "not found"
    if family == "value":
        # a child given too few loops replies with a variable name: the root passes it on as is
        value = rng.choice(DIGITS) if rng.random() < 0.8 else rng.choice(NAMES)
        question = VALUE_QUESTION.format(section=_section_number(rng), var=rng.choice(NAMES))
        return question, f"{value}\n", value
    first = _section_number(rng)
    last = first + rng.randint(1, 19)
    count = str(rng.randint(0, min(9, last - first + 1)))
    question = COUNT_QUESTION.format(first=first, last=last, var=rng.choice(NAMES), digit=rng.choice(DIGITS))
    return question, f"{count}\n", count


def _section_number(rng: random.Random) -> int:
    """1 to 5 digits, each length equally often: the root copies numbers it has seen every
    length of (a 1M-character document has about 19,000 sections, a 5M one 94,000)."""
    return rng.randint(1, 10 ** rng.randint(1, 5) - 1)


def root_example(tok: Any, rng: random.Random) -> Example:
    """One root conversation, labels on the assistant turns only."""
    question, output, answer = random_root_question(rng)
    messages = root_turns(question, output, answer)
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
