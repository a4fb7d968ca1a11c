"""``loopagent demo``: the whole idea in one offline command on a laptop.

Builds a long document (about 1M characters of sections of variable statements,
with one "magic number" sentence hidden in it), then lets the embedded looped root
write REPL programs over it and call the embedded looped child on sections:

1. a needle question and a multi-hop question, each with its answer, whether it
   is right, usage (calls, tokens, loop-tokens) and the trajectory file;
2. accuracy on 4-hop questions as the child's loop budget grows (1, 2, 4, 8):
   the same programs, only the child's latent depth changes.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from loopagent.evals.chains import format_section, make_section
from loopagent.evals.tasks.sniah import NEEDLE, needle_key


class DemoDocument(BaseModel):
    text: str
    needle_key: str
    needle_value: str
    answers: dict[int, dict[str, str]]  # section -> variable -> value (4-hop heads)


def build_document(chars: int, seed: int, hops: int = 4, statements: int = 8) -> DemoDocument:
    """Sections whose first variable heads a ``hops``-hop chain, plus one needle line."""
    rng = random.Random(f"demo/{seed}")
    lines: list[str] = []
    answers: dict[int, dict[str, str]] = {}
    size, number = 0, 0
    while size < chars:
        number += 1
        stmts, head, value = make_section(rng, statements, hops)
        answers[number] = {head: value}
        line = format_section(number, stmts)
        lines.append(line)
        size += len(line) + 1
    key = needle_key(rng)  # the sniah task's style
    value = str(rng.randint(1_000_000, 9_999_999))
    lines.insert(rng.randint(len(lines) // 4, 3 * len(lines) // 4), NEEDLE.format(key=key, value=value))
    return DemoDocument(text="\n".join(lines), needle_key=key, needle_value=value, answers=answers)


class DemoRow(BaseModel):
    loops: int
    correct: int
    total: int
    child_loop_tokens: int
    seconds: float


class DemoReport(BaseModel):
    chars: int
    examples: list[dict[str, Any]]
    table: list[DemoRow]
    seconds: float


def run_demo(
    *,
    chars: int = 1_000_000,
    seed: int = 0,
    questions: int = 8,
    loops: Sequence[int] = (1, 2, 4, 8),
    log_dir: str | Path = "runs/demo",
    console: Any = None,
) -> DemoReport:
    """Run the demo; prints as it goes when given a rich ``console``."""
    from loopagent import RLM, model

    say = console.print if console is not None else (lambda *a, **k: None)
    start = time.monotonic()
    doc = build_document(chars, seed)
    say(f"[bold]document[/]: {len(doc.text):,} characters, {len(doc.answers):,} sections of statements, "
        "one hidden magic number")
    root = model("embedded")
    rlm = RLM(root=root, child=model("embedded", loops=4), max_iterations=4, log_dir=log_dir)
    rng = random.Random(f"demo-questions/{seed}")
    section = rng.randint(1, len(doc.answers))
    (var, value), = doc.answers[section].items()
    examples = []
    with rlm.session(doc.text) as session:
        for question, gold in (
            (f"What is the special magic number for {doc.needle_key}?", doc.needle_value),
            (f"In section {section}, what is the value of {var}?", value),
        ):
            result = session.ask(question)
            ok = (result.answer or "").strip() == gold
            t = result.usage.total
            examples.append({"question": question, "answer": result.answer, "gold": gold, "correct": ok,
                             "calls": t.calls, "tokens": t.total_tokens, "loop_tokens": t.loop_tokens,
                             "trajectory": str(result.trajectory)})
            say(f"\n[yellow]Q:[/] {question}")
            mark = "[green]right[/]" if ok else f"[red]wrong (expected {gold})[/]"
            say(f"[bold]A:[/] {result.answer}  {mark}   [dim]{result.iterations} turns, {t.calls} model calls, "
                f"{t.total_tokens:,} tokens, {t.loop_tokens:,} loop-tokens[/]")
            say(f"[dim]trajectory: {result.trajectory}  (loopagent show it)[/]")
    table = _loop_table(doc, root, loops, questions, seed, log_dir, say)
    report = DemoReport(chars=len(doc.text), examples=examples, table=table, seconds=time.monotonic() - start)
    return report


def _loop_table(doc: DemoDocument, root: Any, loops: Sequence[int], questions: int, seed: int,
                log_dir: str | Path, say: Any) -> list[DemoRow]:
    from rich.table import Table

    from loopagent import RLM, model

    rng = random.Random(f"demo-table/{seed}")
    picked = rng.sample(sorted(doc.answers), questions)
    rows = []
    say(f"\n[bold]4-hop questions, same root programs, child loop budget varied[/] ({questions} questions each)")
    for n in loops:
        began = time.monotonic()
        rlm = RLM(root=root, child=model("embedded", loops=n), max_iterations=4, log_dir=Path(log_dir) / f"loops-{n}")
        correct, loop_tokens = 0, 0
        with rlm.session(doc.text) as session:
            for section in picked:
                (var, value), = doc.answers[section].items()
                result = session.ask(f"In section {section}, what is the value of {var}?")
                correct += (result.answer or "").strip() == value
                child = result.usage.by_depth.get(1)
                loop_tokens += child.loop_tokens if child is not None else 0
        rows.append(DemoRow(loops=n, correct=correct, total=questions, child_loop_tokens=loop_tokens,
                            seconds=time.monotonic() - began))
    table = Table(title="accuracy vs child loops")
    for col in ("child loops", "accuracy", "child loop-tokens", "seconds"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r.loops), f"{r.correct}/{r.total} ({r.correct / r.total:.0%})", f"{r.child_loop_tokens:,}",
                      f"{r.seconds:.1f}")
    say(table)
    return rows
