"""Quality of the embedded models: the numbers in ``backends/embedded/weights/MODEL_CARD.md``.

``python -m loopagent.training.quality OUT`` measures, on held-out seeds:

1. the child alone on one section: accuracy by loop budget (including budgets past
   the 1-8 it was trained on) and by chain length (1-6 hops);
2. single needle in a 1M-character document, root and child both embedded, through
   the evals runner (``sniah``);
3. 4-hop questions over a long document through the runner (``chains``), child loops
   1, 2, 4, 8;
4. how often the root's programs ran without error (from the runs' trajectories).
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


def child_alone(*, items: int = 256, loops: tuple[int, ...] = (1, 2, 4, 8, 12, 16),
                hops: tuple[int, ...] = (1, 2, 3, 4, 5, 6)) -> dict[str, dict[str, float]]:
    backend = embedded_role("child")
    return evaluate_child(backend.model, backend.tokenizer, items=items, seed=HELD_OUT_SEED, loops=list(loops),
                          hops=list(hops))


def program_error_rate(out: Path) -> dict[str, float]:
    """Share of REPL cells that ran without error, over every trajectory under ``out``."""
    cells = errors = 0
    for path in out.rglob("*.jsonl"):
        if path.name == "results.jsonl":
            continue
        for event in read_trajectory(path):
            if event.type == "repl_exec" and event.depth == 0:
                cells += 1
                errors += event.error is not None
    return {"cells": cells, "ok_rate": (cells - errors) / cells if cells else 0.0}


def evaluate(out: str | Path, *, needle_items: int = 20, chain_items: int = 20,
             child_items: int = 256) -> dict[str, Any]:
    """Measure everything above into ``out`` (runs and trajectories) and ``out/quality.json``."""
    out = Path(out)
    started = time.monotonic()
    report: dict[str, Any] = {"child_alone": child_alone(items=child_items)}
    needle = run_eval("sniah", root="embedded", child="embedded", lengths=["1m"], n=needle_items, seed=HELD_OUT_SEED,
                      out=out / "sniah-1m", progress=False, rlm_options={"max_iterations": 4})
    report["needle_1m"] = needle.accuracy
    chains = run_eval("chains", root="embedded", child="embedded", child_loops=[1, 2, 4, 8], lengths=["200k"],
                      n=chain_items, seed=HELD_OUT_SEED, out=out / "chains-4hop", task_options={"hops": 4},
                      progress=False, rlm_options={"max_iterations": 4})
    report["chains_4hop_200k"] = chains.accuracy
    report["root_programs"] = program_error_rate(out)
    report["seconds"] = round(time.monotonic() - started, 1)
    (out / "quality.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory for the runs and quality.json")
    parser.add_argument("--needle-items", type=int, default=20)
    parser.add_argument("--chain-items", type=int, default=20)
    parser.add_argument("--child-items", type=int, default=256)
    args = parser.parse_args(argv)
    report = evaluate(args.out, needle_items=args.needle_items, chain_items=args.chain_items,
                      child_items=args.child_items)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
