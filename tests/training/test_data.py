"""Training data of the embedded models: the programs run, the formats match inference."""

from __future__ import annotations

import ast
import random
import re

import pytest

pytest.importorskip("torch")

from loopagent.environments import SandboxREPL  # noqa: E402
from loopagent.evals.chains import NAMES, ChainsTask, make_section, pointer_steps, resolve  # noqa: E402
from loopagent.evals.phrasings import phrasings  # noqa: E402
from loopagent.evals.tasks.sniah import KEY_VOCABULARY  # noqa: E402
from loopagent.training.data import (  # noqa: E402
    IGNORE,
    NEEDLE,
    RootQuestion,
    child_example,
    child_prompt,
    random_root_question,
    root_example,
    root_program,
    root_turns,
    training_key,
)
from loopagent.training.trainer import make_tokenizer  # noqa: E402


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


def test_needle_program_lists_every_magic_number_with_its_key(repl):
    """Keys of any characters (regex ones too) are listed as written; the root picks by key."""
    doc = ChainsTask().generate(1, 20_000, seed=3)[0].context
    lines = doc.split("\n")
    lines.insert(len(lines) // 2, NEEDLE.format(key="Xq7.L+p", value="4821937"))
    lines.insert(len(lines) // 3, NEEDLE.format(key="calm-river-123", value="1111111"))
    repl.load_context("\n".join(lines))
    result = repl.execute(root_program("needle"))
    assert result.error is None, result.error
    assert result.stdout == "[('calm-river-123', '1111111'), ('Xq7.L+p', '4821937')]\n"


def test_needle_answers_pick_the_asked_key_among_others():
    rng = random.Random(3)
    seen_others = False
    for q in (random_root_question(rng, families=["needle"]) for _ in range(300)):
        listed = ast.literal_eval(q.output)
        asked = [v for k, v in listed if k.lower() in q.question.lower()]
        assert (asked[:1] or ["not found"])[0] == q.answer
        seen_others |= len(listed) > 1
    assert seen_others


def test_value_program_answers_from_the_right_section(repl):
    item = ChainsTask(hops=4).generate(1, 30_000, seed=5)[0]
    repl.load_context(item.context)
    result = repl.execute(root_program("value", section=item.meta["section"], var=item.meta["variable"]))
    assert result.error is None, result.error
    assert result.stdout.strip() == item.answer


def test_count_program_batches_over_sections(repl):
    item = ChainsTask(kind="count", hops=3, count_span=12).generate(1, 30_000, seed=2)[0]
    repl.load_context(item.context)
    m = item.meta
    result = repl.execute(root_program("count", first=m["first"], last=m["last"], var=m["variable"], digit=m["digit"]))
    assert result.error is None, result.error
    assert result.stdout.strip() == item.answer


def test_other_questions_get_a_look_at_the_context(repl):
    repl.load_context("Dear Bob, the meeting moved to Tuesday.")
    result = repl.execute(root_program("other"))
    assert result.error is None and result.stdout.startswith("39\nDear Bob")
    # the look runs on every context shape a task loads (browsecomp's is a dict of pages)
    for context, head in (({"page-1": "Dear Bob"}, "1\n{'page-1'"), (["a", "b"], "2\n['a', 'b']")):
        repl.load_context(context)
        result = repl.execute(root_program("other"))
        assert result.error is None and result.stdout.startswith(head), (context, result)
    with pytest.raises(ValueError, match="unknown family"):
        root_program("poetry")


def test_other_questions_are_long_and_odd_too():
    """Questions outside the families come in the shapes other benchmarks ask in (preambles,
    answer options, instructions, ids and code names, a few hundred characters), so a long
    question still gets the look at the context, not a garbled family program."""
    rng = random.Random(0)
    questions = [random_root_question(rng, families=["other"]).question for _ in range(1000)]
    lengths = sorted(len(q) for q in questions)
    assert lengths[100] < 60 and lengths[-100] > 180 and lengths[-1] <= 400  # the root reads 400 characters
    assert any("\n(A) " in q for q in questions) and any("\nB. " in q for q in questions)
    assert any("`" in q for q in questions) and any(re.search(r"[a-z]{2}\d+", q) for q in questions)
    # the family programs' cues never occur: such a question is one of the families
    assert not [q for q in questions if re.search(r"magic number|section", q, re.I)]


def test_other_questions_keep_the_eval_tasks_unseen():
    """No sentence of a question of the tasks the root is evaluated on as never seen (the quality
    report's foreign tasks) occurs in its questions outside the families. (RULER's needle question,
    a training phrasing, shares one with ``multihop``: "Answer with the number only.")"""
    from loopagent.evals.base import get_task
    from loopagent.training.quality import FOREIGN_TASKS

    rng = random.Random(0)
    training = "\n".join(random_root_question(rng, families=["other"]).question.lower() for _ in range(5000))
    sentences = {s.strip().lower() for task in FOREIGN_TASKS for item in get_task(task).generate(20, 20_000, seed=3)
                 for s in re.split(r"(?<=[.?!])\s+|\n", item.question) if len(s.strip()) > 12}
    assert len(sentences) > 20
    assert not [s for s in sentences if s in training]


def test_root_questions_name_sections_of_every_length():
    # a 1M-character document has about 19,000 sections: the root must copy 5-digit numbers too
    rng = random.Random(0)
    numbers = [int(n) for q in (random_root_question(rng) for _ in range(600))
               for n in re.findall(r"sections? (\d+)", q.question, re.I)]
    assert {len(str(n)) for n in numbers} == {1, 2, 3, 4, 5}


def test_training_keys_never_use_the_held_out_vocabulary():
    rng = random.Random(0)
    keys = [training_key(rng) for _ in range(3000)]
    assert not {part.lower() for k in keys for part in k.split("-")} & KEY_VOCABULARY
    assert len(set(keys)) > 2900  # random keys, not a list the model could memorize
    assert any(k.isalnum() and not k.isalpha() for k in keys) and any("-" in k for k in keys)


def test_training_questions_use_training_phrasings_only():
    """Held-out phrasings stay held out: no training question is one of them, in any case."""
    rng = random.Random(1)
    held = [re.compile(re.escape(t).replace(r"\{key\}", ".+").replace(r"\{section\}", r"\d+")
                       .replace(r"\{var\}", "[a-z]").replace(r"\{first\}", r"\d+").replace(r"\{last\}", r"\d+")
                       .replace(r"\{digit\}", r"\d"), re.I)
            for family in ("needle", "value", "count") for t in phrasings(family, "heldout")]
    questions = [random_root_question(rng) for _ in range(2000)]
    assert not [q.question for q in questions if any(h.fullmatch(q.question) for h in held)]
    assert {q.family for q in questions} == {"needle", "value", "count", "other"}
    cases = {"upper" if q.question.isupper() else "lower" if q.question.islower() else "other" for q in questions}
    assert cases == {"upper", "lower", "other"}
    held_rng = random.Random(1)
    assert any(h.fullmatch(random_root_question(held_rng, "heldout", families=["value"]).question) for h in held)


def test_child_example_first_query_is_what_inference_sees():
    tok = make_tokenizer("child")
    example = child_example(tok, random.Random(0), statements=[8], hops=[3], depths=4, queries=3)
    first_query = next(i for i, t in enumerate(example.input_ids) if tok.decode([t]).startswith("?"))
    prompt_ids = example.input_ids[: first_query + 1]
    shown = tok.decode(prompt_ids)
    statements, var = shown.rsplit(" ?", 1)
    stmts = statements.split("; ")
    rendered = tok.apply_chat_template([{"role": "user", "content": child_prompt(stmts, var)}],
                                       add_generation_prompt=True, tokenize=False)
    assert rendered == shown
    assert tok(rendered, add_special_tokens=False)["input_ids"] == prompt_ids
    assert len(stmts) == 8 and len(tok(statements, add_special_tokens=False)["input_ids"]) == 3 * 8 - 2
    # after k loops the query predicts the chain after k lookups: two names, then the value
    targets = [tok.decode([row[first_query + 1]]) for row in example.depth_labels]
    assert targets == pointer_steps(stmts, var, 4)
    assert targets[0] in NAMES and targets[1] in NAMES and targets[2] == targets[3] == resolve(stmts, var)[0]
    assert example.labels == example.depth_labels[-1]
    # three queries labelled at every depth, then a one-token reply and the end token
    for row in example.depth_labels:
        assert len([x for x in row if x != IGNORE]) == 3 + 1
        assert row[-1] == tok.eos_token_id
    assert example.input_ids[-1] == tok.eos_token_id
    assert tok.decode([example.input_ids[-2]]) in pointer_steps(stmts, tok.decode([example.input_ids[-3]])[1], 4)


def test_child_batches_carry_labels_for_every_depth():
    from loopagent.training.data import collate

    tok = make_tokenizer("child")
    rng = random.Random(1)
    batch = collate([child_example(tok, rng, statements=[5, 9], hops=[1, 4], depths=6) for _ in range(5)],
                    tok.pad_token_id)
    depths, rows, width = batch["depth_labels"].shape
    assert (depths, rows) == (6, 5) and batch["input_ids"].shape == (5, width)
    # padding is never a target
    assert (batch["depth_labels"][:, batch["attention_mask"] == 0] == IGNORE).all()


def test_root_example_matches_the_root_chat_template():
    tok = make_tokenizer("root")
    rng = random.Random(1)
    q = random_root_question(random.Random(1))
    assert isinstance(q, RootQuestion)
    example = root_example(tok, rng)
    rendered = tok.apply_chat_template(root_turns(q), tokenize=False)
    assert example.input_ids == tok(rendered, add_special_tokens=False)["input_ids"]
    labelled = tok.decode([t for t in example.labels if t != IGNORE])
    assert q.program in labelled and f"FINAL('{q.answer}')" in labelled
    assert q.question not in labelled  # the question is input, not a target


def test_child_prompt_format():
    stmts, head, value = make_section(random.Random(4), 8, 3)
    prompt = child_prompt(stmts, head)
    assert re.fullmatch(r"([a-z]=[a-z0-9]; ){7}[a-z]=[a-z0-9] \?[a-z]", prompt)
    assert child_reply(prompt) == value
