"""Write ``weights/MODEL_CARD.md`` from the training runs and ``quality.json``.

``python -m loopagent.backends.embedded.card ROOT_RUN CHILD_RUN QUALITY_JSON``
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

from . import WEIGHTS


def _run_summary(run: Path) -> dict[str, Any]:
    config = json.loads((run / "train_config.json").read_text())
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines() if line.strip()]
    last = log[-1]
    evals = [r for r in log if "eval" in r]
    return {"config": config, "steps": last["step"], "seconds": last["seconds"], "loss": last["loss"],
            "eval": evals[-1]["eval"] if evals else {}}


def _params(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return sum(f.get_slice(k).get_shape().numel() if hasattr(f.get_slice(k).get_shape(), "numel") else _prod(f.get_slice(k).get_shape()) for k in f.keys())


def _prod(shape: Any) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def render(root_run: Path, child_run: Path, quality: dict[str, Any]) -> str:
    root, child = _run_summary(root_run), _run_summary(child_run)
    hops = quality["child_alone"]
    loops = sorted({int(k[1:]) for row in hops.values() for k in row}, key=int)
    table = ["| hops | " + " | ".join(f"L={n}" for n in loops) + " |", "|---|" + "---|" * len(loops)]
    for h, row in sorted(hops.items(), key=lambda kv: int(kv[0][4:])):
        table.append(f"| {h[4:]} | " + " | ".join(f"{row[f'L{n}']:.2f}" for n in loops) + " |")
    chains = quality.get("chains_4hop_200k", {})
    needle = quality.get("needle_1m", {})
    programs = quality.get("root_programs", {})
    lines = [
        "# loopagent embedded models",
        "",
        "Two small looped transformers (`LoopedForCausalLM`) that ship with loopagent so that",
        "`loopagent demo` and `model(\"embedded\")` work offline on a laptop CPU.",
        "",
        "| | root | child |",
        "|---|---|---|",
        f"| role | writes the REPL program, reads its output, answers | resolves a variable in one section of statements |",
        f"| parameters | {_params(WEIGHTS / 'root'):,} | {_params(WEIGHTS / 'child'):,} |",
        f"| layers | prelude {root['config']['num_prelude_layers']} / core {root['config']['num_core_layers']} / coda {root['config']['num_coda_layers']}, hidden {root['config']['hidden_size']} | prelude {child['config']['num_prelude_layers']} / core {child['config']['num_core_layers']} / coda {child['config']['num_coda_layers']}, hidden {child['config']['hidden_size']} |",
        f"| injection | {root['config']['injection']} | {child['config']['injection']} |",
        f"| loops: default / max / trained | {root['config']['default_loops']} / {root['config']['max_loops']} / {root['config']['loops_min']}-{root['config']['loops_max']} | {child['config']['default_loops']} / {child['config']['max_loops']} / {child['config']['loops_min']}-{child['config']['loops_max']} |",
        "| tokenizer | bytes + chat markers | bytes + one token per statement `x=y` and query `?x` |",
        f"| training | {root['steps']} steps, batch {root['config']['batch_size']}, {root['seconds'] / 60:.0f} min | {child['steps']} steps, batch {child['config']['batch_size']}, {child['seconds'] / 60:.0f} min |",
        f"| final training loss | {root['loss']:.4f} | {child['loss']:.4f} |",
        "",
        f"Hardware: {platform.machine()} CPU, 2 cores shared with other jobs (no GPU); torch CPU build, one thread per run.",
        "Commands: `loopagent train root --out runs/embedded-root` and `loopagent train child --out runs/embedded-child`",
        "(presets in `backends/embedded/train.py`; deterministic by seed, resumable).",
        "",
        "## Data",
        "",
        "Generated on the fly from seeded families in `loopagent.evals` (nothing downloaded):",
        "",
        "- child: sections of 8 statements over single-letter variables (`q=a; c=5; a=c ...`) with one chain",
        "  of 1-4 hops and distractor chains; the section is shown twice (`S | S ?x`) so a causal model can",
        "  follow chains inside the second copy; every variable is asked, and statement positions carry",
        "  dense labels (their variable's value).",
        "- root: questions of three families (needle in a document, a section's variable, counting a value",
        "  over a range of sections), the REPL program for each, the REPL output, and `FINAL('...')`.",
        "",
        "## Held-out quality (seed 10000; `python -m loopagent.backends.embedded.evaluate`)",
        "",
        "Child alone, first-turn accuracy on held-out sections by chain length and loop budget:",
        "",
        *table,
        "",
        f"- Single needle in a 1M-character document, root and child embedded (evals runner, `sniah`): {json.dumps(needle)}",
        f"- 4-hop questions over a 200K-character document by child loops (evals runner, `chains`): {json.dumps(chains)}",
        f"- Root programs that ran without error: {programs.get('ok_rate', 0):.0%} of {programs.get('cells', 0)} REPL cells.",
        "",
        "## What it can and cannot do",
        "",
        "- It handles the three trained question families exactly as phrased by the generators",
        "  (`What is the special magic number for KEY?`, `In section N, what is the value of v?`,",
        "  `In sections A to B, how many times does v equal d?`) over documents in those formats.",
        "- Anything else gets a well-formed run that ends with some answer or a limit reason; the answer is",
        "  not meaningful. It does not read free text, follow instructions or know any facts.",
        "- The child is trained on 1-8 loops; the table above shows what happens past that range.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    root_run, child_run, quality = Path(args[0]), Path(args[1]), json.loads(Path(args[2]).read_text())
    (WEIGHTS / "MODEL_CARD.md").write_text(render(root_run, child_run, quality))
    print(WEIGHTS / "MODEL_CARD.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
