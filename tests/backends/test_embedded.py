"""The shipped embedded models: they load, and clear the quality bars on a small sample."""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")

from loopagent import RLM, ConfigError, InvalidLoopsError, model  # noqa: E402
from loopagent.backends.embedded import WEIGHTS, EmbeddedBackend, embedded_role  # noqa: E402
from loopagent.evals.base import get_task  # noqa: E402
from loopagent.training.data import random_root_question  # noqa: E402
from loopagent.training.quality import HELD_OUT_SEED  # noqa: E402
from loopagent.training.trainer import evaluate_child  # noqa: E402


def test_weights_are_small_plain_checkpoints():
    total = sum(f.stat().st_size for f in WEIGHTS.rglob("*") if f.is_file())
    assert total <= 20 * 1024 * 1024
    assert (WEIGHTS / "MODEL_CARD.md").is_file()
    for role in ("root", "child"):
        assert (WEIGHTS / role / "model.safetensors").is_file() and (WEIGHTS / role / "tokenizer.json").is_file()


def test_embedded_spec_takes_its_role_in_an_rlm():
    backend = model("embedded", loops=4)
    assert isinstance(backend, EmbeddedBackend)
    rlm = RLM(root=backend)
    assert rlm.root.name == "embedded:root" and rlm.child.name == "embedded:child"
    assert rlm.child.default_loops == 4


def test_child_latent_depth_pays_off_on_four_hops():
    child = model("embedded:child")
    acc = evaluate_child(child.model, child.tokenizer, items=128, seed=HELD_OUT_SEED + 1, loops=[1, 8],
                         hops=[4])["hops4"]
    assert acc["L8"] - acc["L1"] >= 0.30, acc
    assert acc["L8"] >= 0.8, acc


def test_each_child_loop_resolves_one_hop():
    child = model("embedded:child")
    prompt = [{"role": "user", "content": "q=a; c=5; a=c; m=7 ?q"}]  # q -> a -> c -> 5
    replies = [child.complete(prompt, loops=n) for n in (1, 2, 3, 4, 12)]
    assert [r.text for r in replies] == ["a", "c", "5", "5", "5"]
    assert all(r.finish_reason == "stop" for r in replies)


#: Where the shipped root (retrained by the held-out pipeline, issue #19) is still below the bar:
#: a value or count asked in held-out phrasings (MODEL_CARD.md, "Status").
HELD_OUT_PHRASINGS_SHORT = ("the shipped root copies a variable or digit from held-out value and count phrasings "
                            "less often than the bar asks; see MODEL_CARD.md, Status")


def _canonical_questions(rng: random.Random, n: int) -> list[tuple[str, set[int]]]:
    """Questions in the phrasings the shipped root was trained on, with the sections they name."""
    from loopagent.evals.phrasings import phrasings
    from loopagent.evals.tasks.sniah import needle_key

    out = []
    for i in range(n):
        family = ("needle", "value", "count")[i % 3]
        template = phrasings(family, "canonical")[0]
        if family == "needle":
            out.append((template.format(key=needle_key(rng)), set()))
        elif family == "value":
            section = rng.randint(1, 99_999)
            out.append((template.format(section=section, var=rng.choice("abcxyz")), {section}))
        else:
            first = rng.randint(1, 9_999)
            last = first + rng.randint(1, 15)
            out.append((template.format(first=first, last=last, var=rng.choice("pqr"), digit=rng.randint(0, 9)),
                        set(range(first, last + 1))))
    return out


def test_root_programs_run_without_error():
    """The root's programs execute on unseen questions of its trained phrasings."""
    from loopagent.environments import SandboxREPL
    from loopagent.evals.chains import format_section, make_section
    from loopagent.parsing import find_code_blocks

    root = model("embedded:root")
    rng = random.Random(HELD_OUT_SEED + 2)
    questions = _canonical_questions(rng, 21)
    replies = root.batch([[{"role": "user", "content": q}] for q, _ in questions], max_tokens=220)
    numbers = set().union(*(sections for _, sections in questions))
    document = "\n".join(format_section(n, make_section(rng, 8, 2)[0]) for n in sorted(numbers))
    ok = 0
    with SandboxREPL() as repl:
        repl.load_context(document)
        repl.register("llm_query", lambda prompt: "5")
        repl.register("llm_batch", lambda prompts: ["5"] * len(prompts))
        for reply in replies:
            blocks = find_code_blocks(reply.text)
            ok += bool(blocks) and all(repl.execute(code).ok for code in blocks)
    assert ok / len(replies) >= 0.9, [r.text for r in replies]


@pytest.mark.xfail(strict=True, reason=HELD_OUT_PHRASINGS_SHORT)
def test_root_programs_run_on_held_out_phrasings():
    """Quality bar of issue #19: programs that run on >= 95% of held-out phrasings, mixed case,
    random keys and questions of no family."""
    from loopagent.environments import SandboxREPL
    from loopagent.parsing import find_code_blocks

    root = model("embedded:root")
    rng = random.Random(HELD_OUT_SEED + 2)
    questions = [random_root_question(rng, "heldout") for _ in range(20)]
    replies = root.batch([[{"role": "user", "content": q.question}] for q in questions], max_tokens=220)
    with SandboxREPL() as repl:
        repl.load_context("Section 1: a=5")
        repl.register("llm_query", lambda prompt: "5")
        repl.register("llm_batch", lambda prompts: ["5"] * len(prompts))
        ok = sum(bool(b := find_code_blocks(r.text)) and all(repl.execute(c).error_type != "SyntaxError" for c in b)
                 and r.text.strip() == f"```repl\n{q.program}\n```" for q, r in zip(questions, replies))
    assert ok / len(replies) >= 0.95


@pytest.mark.slow
def test_single_needle_in_a_million_characters():
    items = get_task("sniah").generate(3, 1_000_000, seed=HELD_OUT_SEED + 3)
    rlm = RLM(root=model("embedded"), max_iterations=4)
    correct = sum(rlm.run(item.question, item.context).answer == item.answer for item in items)
    assert correct >= 3


@pytest.mark.parametrize("task, options", [
    ("sniah", {"keys": "chars", "phrasing": "heldout", "case": "mixed"}),     # random keys, held-out phrasings
    pytest.param("chains", {"hops": 3, "phrasing": "heldout", "case": "mixed"},  # the value family reworded
                 marks=pytest.mark.xfail(strict=True, reason=HELD_OUT_PHRASINGS_SHORT)),
])
def test_held_out_keys_and_phrasings_are_answered(task, options):
    """Off the training distribution, root and child embedded (a small sample of the model card's runs)."""
    task_obj = get_task(task, **options)
    items = task_obj.generate(8, 20_000, seed=HELD_OUT_SEED + 4)
    rlm = RLM(root=model("embedded"), max_iterations=4)
    scores = [task_obj.score(it, rlm.run(it.question, it.context).answer) for it in items]
    assert sum(scores) >= 7, [(it.question, s) for it, s in zip(items, scores)]


def test_questions_outside_the_families_end_cleanly():
    result = RLM(root=model("embedded"), max_iterations=3).run("Who wrote the first letter, and why?",
                                                               context="Dear Bob, ...")
    assert result.reason in ("final", "max_iterations", "consecutive_errors")
    assert result.iterations >= 1


@pytest.mark.slow
def test_demo_runs_small(tmp_path):
    from loopagent.demo import run_demo

    report = run_demo(chars=60_000, questions=3, loops=(1, 8), log_dir=tmp_path)
    assert [row.loops for row in report.table] == [1, 8]
    assert [row.child_loop_tokens for row in report.table][1] == 8 * report.table[0].child_loop_tokens
    # 4-hop questions: one child loop is too shallow, eight resolve them all
    assert report.table[0].correct < report.table[1].correct == report.table[1].total
    assert len(report.examples) == 2 and all(e["trajectory"] for e in report.examples)


def test_embedded_loops_set_the_child_and_root_loops_the_root():
    """loops (the demo's knob, alias child_loops) is the child's budget only: a budget past the
    root's maximum is fine for the child; root_loops sets the root's, each checked against its role."""
    backend = model("embedded", loops=12)
    rlm = RLM(root=backend)
    assert rlm.child.default_loops == 12
    assert rlm.root.default_loops == embedded_role("root").default_loops  # the root keeps its default
    both = RLM(root=model("embedded", child_loops=6, root_loops=2))
    assert (both.child.default_loops, both.root.default_loops) == (6, 2)
    with pytest.raises(InvalidLoopsError, match="embedded:root"):
        model("embedded", root_loops=99)
    with pytest.raises(ConfigError, match="both set the embedded child's budget"):
        model("embedded", loops=4, child_loops=6)


def test_root_turns_log_what_the_root_read(tmp_path):
    """The trajectory logs the root's input after its chat template: the embedded root's
    template leaves out the system prompt and cuts user turns, and the log says so."""
    from loopagent.trajectory import read_trajectory

    question = "What is the special magic number for calm-river-123?"
    result = RLM(model("embedded"), max_iterations=2, log_dir=tmp_path).run(question, context="x " * 1000)
    turns = [e for e in read_trajectory(result.trajectory) if e.type == "root_turn"]
    assert turns[0].model_input == f"<|user|>{question}<|eos|><|assistant|>"
    assert "REPL" not in turns[0].model_input  # the system prompt was not read
    if len(turns) > 1:  # the whole conversation, rendered: the newest message last
        assert turns[1].model_input.endswith(f"<|user|>{turns[1].prompt[:400]}<|eos|><|assistant|>")
