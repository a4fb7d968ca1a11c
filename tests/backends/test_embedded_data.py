"""Training data of the embedded models: the programs run, the formats match inference."""

from __future__ import annotations

import random
import re

import pytest

pytest.importorskip("torch")

from loopagent.backends.embedded.data import (  # noqa: E402
    IGNORE,
    NEEDLE,
    child_example,
    child_prompt,
    random_root_question,
    root_example,
    root_program,
    root_turns,
)
from loopagent.backends.embedded.train import make_tokenizer  # noqa: E402
from loopagent.environments import SandboxREPL  # noqa: E402
from loopagent.evals.chains import ChainsTask, make_section, resolve  # noqa: E402


def child_reply(prompt: str) -> str:
    """What a perfect child answers: resolve the queried variable in the statements."""
    statements, var = prompt.rsplit(" ?", 1)
    return resolve(statements.split("; "), var)[0] or "?"


@pytest.fixture(scope="module")
def repl():
    with SandboxREPL() as r:
        r.register("llm_query", child_reply)
        r.register("llm_batch", lambda prompts: [child_reply(p) for p in prompts])
        yield r


def test_needle_program_finds_the_needle(repl):
    doc = ChainsTask().generate(1, 20_000, seed=3)[0].context
    lines = doc.split("\n")
    lines.insert(len(lines) // 2, NEEDLE.format(key="amber-qx", value="4821937"))
    repl.load_context("\n".join(lines))
    result = repl.execute(root_program("What is the special magic number for amber-qx?"))
    assert result.error is None, result.error
    assert result.stdout == "['4821937']\n"


def test_value_program_answers_from_the_right_section(repl):
    item = ChainsTask(hops=4).generate(1, 30_000, seed=5)[0]
    repl.load_context(item.context)
    result = repl.execute(root_program(item.question))
    assert result.error is None, result.error
    assert result.stdout.strip() == item.answer


def test_count_program_batches_over_sections(repl):
    item = ChainsTask(kind="count", hops=3, count_span=12).generate(1, 30_000, seed=2)[0]
    repl.load_context(item.context)
    result = repl.execute(root_program(item.question))
    assert result.error is None, result.error
    assert result.stdout.strip() == item.answer


def test_questions_outside_the_families_get_no_program():
    assert root_program("Who wrote the letter?") is None


def test_child_example_first_turn_is_what_inference_sees():
    tok = make_tokenizer("child")
    example = child_example(tok, random.Random(0))
    first_query = next(i for i, t in enumerate(example.input_ids) if tok.decode([t]).startswith("?"))
    prompt_ids = example.input_ids[: first_query + 1]
    shown = tok.decode(prompt_ids)  # "S | S ?x": the template shows the statements twice
    statements, var = shown.rsplit(" ?", 1)
    statements = statements.split(" | ")[0]
    rendered = tok.apply_chat_template([{"role": "user", "content": f"{statements} ?{var}"}], add_generation_prompt=True,
                                       tokenize=False)
    assert rendered == shown
    assert tok(rendered, add_special_tokens=False)["input_ids"] == prompt_ids
    n = len(statements.split("; "))
    assert len(tok(statements, add_special_tokens=False)["input_ids"]) == 3 * n - 2  # n statements, n - 1 "; "
    # the answer is predicted at the query token
    assert tok.decode([example.labels[first_query + 1]]) == resolve(statements.split("; "), var)[0]
    # every variable is asked once (answer + end token), statements that resolve are labelled too
    answers = [label for label in example.labels[first_query + 1 :] if label != IGNORE]
    assert len(answers) == 2 * n
    dense = [label for label in example.labels[: first_query + 1] if label != IGNORE]
    assert dense and all(tok.decode([d]).isdigit() for d in dense)


def test_root_example_matches_the_root_chat_template():
    tok = make_tokenizer("root")
    rng = random.Random(1)
    question, output, answer = random_root_question(random.Random(1))
    example = root_example(tok, rng)
    rendered = tok.apply_chat_template(root_turns(question, output, answer), tokenize=False)
    assert example.input_ids == tok(rendered, add_special_tokens=False)["input_ids"]
    labelled = tok.decode([t for t in example.labels if t != IGNORE])
    assert root_program(question) in labelled and f"FINAL('{answer}')" in labelled
    assert question not in labelled  # the question is input, not a target


def test_child_prompt_format():
    stmts, head, value = make_section(random.Random(4), 8, 3)
    prompt = child_prompt(stmts, head)
    assert re.fullmatch(r"([a-z]=[a-z0-9]; ){7}[a-z]=[a-z0-9] \?[a-z]", prompt)
    assert child_reply(prompt) == value
