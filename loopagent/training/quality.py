"""Quality of the embedded models: the numbers in ``backends/embedded/weights/MODEL_CARD.md``.

``python -m loopagent.training.quality OUT`` measures, on held-out seeds, through the evals
runner with root and child both embedded, the training distribution and the held-out one
apart (:mod:`loopagent.evals.phrasings`):

1. the child alone on one section: accuracy by loop budget (including budgets past
   the 1-8 it was trained on) and by chain length (1-6 hops); and on 4-hop sections
   written as fact sentences, in training and in held-out templates;
2. a needle in a 1M-character document: keys like the training ones (random characters,
   training phrasings), keys of a vocabulary no training key uses (alone, and among three
   other needles), and held-out phrasings in mixed case;
3. a section's variable and a count over sections asked in held-out phrasings;
4. 4-hop questions over a long document, child loops 1, 2, 4, 8;
5. the root's REPL cells: the share that failed, and that did not parse, over every run
   above, and apart over questions of the other eval tasks (never seen in training).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from loopagent.backends.embedded import embedded_role
from loopagent.evals.runner import run_eval
from loopagent.trajectory import read_trajectory

from .trainer import evaluate_child

HELD_OUT_SEED = 10_000

#: (report key, task, task options, length, distribution): the runs of items 2 and 3.
FAMILY_RUNS: tuple[tuple[str, str, dict[str, Any], str, str], ...] = (
    ("needle_1m_training_style", "sniah", {"keys": "chars", "phrasing": "train"}, "1m",
     "training: random-character keys, training phrasings"),
    ("needle_1m", "sniah", {"keys": "words"}, "1m", "held-out key vocabulary, RULER's question"),
    ("needle_1m_distractors", "sniah", {"keys": "words", "distractors": 3}, "1m",
     "held-out key vocabulary, 3 other needles in the document (RULER's multi-key)"),
    ("needle_1m_heldout_phrasings", "sniah", {"keys": "words", "phrasing": "heldout", "case": "mixed"}, "1m",
     "held-out key vocabulary, held-out phrasings, mixed case"),
    ("value_heldout_phrasings", "chains", {"hops": 4, "phrasing": "heldout", "case": "mixed"}, "200k",
     "held-out phrasings, mixed case (child 8 loops)"),
    ("count_heldout_phrasings", "chains", {"kind": "count", "hops": 2, "phrasing": "heldout", "case": "mixed"},
     "100k", "held-out phrasings, mixed case (child 8 loops)"),
)
#: Tasks the root never saw a question of: its cells there must still run.
FOREIGN_TASKS = ("oolong", "multihop", "codeqa", "browsecomp")
_SYNTAX = ("SyntaxError", "IndentationError", "TabError")


def child_alone(backend: Any, *, items: int = 256, loops: tuple[int, ...] = (1, 2, 4, 8, 12, 16),
                hops: tuple[int, ...] = (1, 2, 3, 4, 5, 6), facts: str = "statements") -> dict[str, dict[str, float]]:
    """The child ``backend`` on held-out sections written as ``facts``, by hops and loops."""
    return evaluate_child(backend.model, backend.tokenizer, items=items, seed=HELD_OUT_SEED, loops=list(loops),
                          hops=list(hops), facts=facts)


def root_cells(out: Path) -> dict[str, float]:
    """The root's REPL cells over every trajectory under ``out``: how many, the share that ran
    without error, and the share that did not parse."""
    cells = errors = syntax = 0
    for path in out.rglob("*.jsonl"):
        if path.name == "results.jsonl":
            continue
        for event in read_trajectory(path):
            if event.type == "repl_exec" and event.depth == 0:
                cells += 1
                errors += event.error is not None
                syntax += event.error_type in _SYNTAX
    return {"cells": cells, "ok_rate": (cells - errors) / cells if cells else 0.0,
            "syntax_error_rate": syntax / cells if cells else 0.0}


def evaluate(out: str | Path, *, needle_items: int = 20, chain_items: int = 20, child_items: int = 256,
             foreign_items: int = 5) -> dict[str, Any]:
    """Measure everything above into ``out`` (runs and trajectories) and ``out/quality.json``."""
    out = Path(out)
    started = time.monotonic()
    options: dict[str, Any] = {"progress": False, "seed": HELD_OUT_SEED, "rlm_options": {"max_iterations": 4}}
    child = embedded_role("child")
    report: dict[str, Any] = {"child_alone": child_alone(child, items=child_items)}
    report["child_fact_sentences"] = {
        facts: child_alone(child, items=child_items // 4, loops=(1, 8), hops=(4,), facts=facts)["hops4"]
        for facts in ("sentences", "heldout_sentences")}
    for key, task, task_options, length, _ in FAMILY_RUNS:
        chains = task == "chains"
        summary = run_eval(task, root="embedded", child="embedded", child_loops=[8] if chains else [None],
                           lengths=[length], n=chain_items if chains else needle_items, out=out / key,
                           task_options=task_options, **options)
        report[key] = summary.accuracy
    loops = run_eval("chains", root="embedded", child="embedded", child_loops=[1, 2, 4, 8], lengths=["200k"],
                     n=chain_items, out=out / "chains-4hop", task_options={"hops": 4}, **options)
    report["chains_4hop_200k"] = loops.accuracy
    for task in FOREIGN_TASKS:
        run_eval(task, root="embedded", child="embedded", lengths=["20k"], n=foreign_items,
                 out=out / "foreign" / task, **options)
    report["root_cells"] = root_cells(out)
    report["root_cells_foreign"] = root_cells(out / "foreign")
    report["seconds"] = round(time.monotonic() - started, 1)
    (out / "quality.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory for the runs and quality.json")
    parser.add_argument("--needle-items", type=int, default=20)
    parser.add_argument("--chain-items", type=int, default=20)
    parser.add_argument("--child-items", type=int, default=256)
    parser.add_argument("--foreign-items", type=int, default=5)
    args = parser.parse_args(argv)
    report = evaluate(args.out, needle_items=args.needle_items, chain_items=args.chain_items,
                      child_items=args.child_items, foreign_items=args.foreign_items)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
