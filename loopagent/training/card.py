"""Write ``backends/embedded/weights/MODEL_CARD.md`` from the training runs and ``quality.json``.

``python -m loopagent.training.card ROOT CHILD QUALITY_JSON``

``ROOT`` and ``CHILD``: training runs (``loopagent train --out``) or exported models carrying
their ``training.json`` (the shipped ``backends/embedded/weights/child``, when only the root
was retrained).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from loopagent.backends.embedded import WEIGHTS
from loopagent.errors import ConfigError

from .quality import FAMILY_RUNS, FOREIGN_TASKS
from .trainer import TRAINING_SUMMARY, run_summary


def _summary(path: Path) -> dict[str, Any]:
    """How a model trained: from a run directory, or from the ``training.json`` its export
    (a shipped ``weights/<role>`` folder) carries, so one model can be retrained alone."""
    if (path / TRAINING_SUMMARY).is_file():
        return json.loads((path / TRAINING_SUMMARY).read_text())
    if (path / "train_config.json").is_file():
        return run_summary(path)
    raise ConfigError(f"{path} is neither a training run (train_config.json) nor an exported model "
                      f"({TRAINING_SUMMARY}); pass a `loopagent train --out` folder or a weights/<role> folder")


def _params(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return sum(f.get_slice(k).get_shape().numel() if hasattr(f.get_slice(k).get_shape(), "numel")
                   else _prod(f.get_slice(k).get_shape()) for k in f.keys())


def _prod(shape: Any) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _loop_summary(hops: dict[str, dict[str, float]], loops: list[int], trained: int) -> list[str]:
    """Two sentences: the gain from loops on 4 hops, and how far past the trained loops it holds."""
    out = []
    if "hops4" in hops and {"L1", f"L{trained}"} <= set(hops["hops4"]):
        row = hops["hops4"]
        out.append(f"4 hops: {row['L1']:.2f} at 1 loop, {row[f'L{trained}']:.2f} at {trained} "
                   f"({(row[f'L{trained}'] - row['L1']) * 100:+.0f} points).")
    beyond = [n for n in loops if n > trained]
    if beyond:
        worst = ", ".join(f"{min(row[f'L{n}'] for row in hops.values()):.2f} at {n} loops" for n in beyond)
        out.append(f"Past the {trained} loops it was trained on, the lowest accuracy over all chain lengths "
                   f"is {worst}.")
    return out


def _fact_lines(facts: dict[str, dict[str, float]]) -> list[str]:
    """The child on 4-hop sections written as English sentences (``q equals a. Set c to 5.``)."""
    if not facts:
        return []
    split = {"sentences": "training", "heldout_sentences": "held-out"}
    shown = "; ".join(f"{split.get(name, name)} templates: {row.get('L1', 0):.2f} at 1 loop, "
                      f"{row.get('L8', 0):.2f} at 8" for name, row in facts.items())
    return [f"Child alone on 4-hop sections written as fact sentences ({shown}).", ""]


def _accuracy(by_config: dict[str, float]) -> str:
    return ", ".join(f"{v:.2f}" for v in by_config.values())


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 600 else f"{seconds / 60:.0f} min"


def _training(summary: dict[str, Any]) -> str:
    """Steps, batch and time of a run; a fine-tune shows the run it started from first."""
    this = f"{summary['steps']} steps, batch {summary['config']['batch_size']}, {_duration(summary['seconds'])}"
    if "init" not in summary:
        return this
    return f"{_training(summary['init'])}, then a fine-tune of {this}"


def _span(values: list[int]) -> str:
    return f"{min(values)}-{max(values)}" if len(set(values)) > 1 else str(values[0])


def _objective(config: dict[str, Any]) -> str:
    if config.get("objective") == "stepwise":
        return f"latent-step supervision at every depth 1-{config['loops_max']} (see Data)"
    return "next-token loss on the answers, loops sampled per step"


def render(root_run: Path, child_run: Path, quality: dict[str, Any]) -> str:
    root, child = _summary(root_run), _summary(child_run)
    hops = quality["child_alone"]
    loops = sorted({int(k[1:]) for row in hops.values() for k in row}, key=int)
    table = ["| hops | " + " | ".join(f"L={n}" for n in loops) + " |", "|---|" + "---|" * len(loops)]
    for h, row in sorted(hops.items(), key=lambda kv: int(kv[0][4:])):
        table.append(f"| {h[4:]} | " + " | ".join(f"{row[f'L{n}']:.2f}" for n in loops) + " |")
    chains = quality.get("chains_4hop_200k", {})
    cells, foreign = quality.get("root_cells", {}), quality.get("root_cells_foreign", {})
    lines = [
        "# loopagent embedded models",
        "",
        "Two small looped transformers (`LoopedForCausalLM`) that ship with loopagent so that",
        "`loopagent demo` and `model(\"embedded\")` work offline on a laptop CPU.",
        "",
        "| | root | child |",
        "|---|---|---|",
        ("| role | writes the REPL program, reads its output, answers "
         "| resolves a variable in one section of statements |"),
        f"| parameters | {_params(WEIGHTS / 'root'):,} | {_params(WEIGHTS / 'child'):,} |",
        (f"| layers | prelude {root['config']['num_prelude_layers']} / core {root['config']['num_core_layers']} "
         f"/ coda {root['config']['num_coda_layers']}, hidden {root['config']['hidden_size']} "
         f"| prelude {child['config']['num_prelude_layers']} / core {child['config']['num_core_layers']} "
         f"/ coda {child['config']['num_coda_layers']}, hidden {child['config']['hidden_size']} |"),
        f"| injection | {root['config']['injection']} | {child['config']['injection']} |",
        (f"| loops: default / max / trained | {root['config']['default_loops']} / {root['config']['max_loops']} "
         f"/ {root['config']['loops_min']}-{root['config']['loops_max']} "
         f"| {child['config']['default_loops']} / {child['config']['max_loops']} "
         f"/ {child['config']['loops_min']}-{child['config']['loops_max']} |"),
        "| tokenizer | bytes + chat markers | bytes + one token per statement `x=y` and query `?x` |",
        f"| training | {_training(root)} | {_training(child)} |",
        f"| final training loss | {root['loss']:.2g} | {child['loss']:.2g} |",
        (f"| objective | next-token loss on the assistant turns, loops sampled per step "
         f"| {_objective(child['config'])} |"),
        f"| hardware | {root['hardware']} | {child['hardware']} |",
        "",
        "Commands: `loopagent train root --out runs/embedded-root` and",
        *(["(then the fine-tune: `loopagent train root --preset root-tune --init-from runs/embedded-root/model",
           "--out runs/embedded-root-tune`)"] if "init" in root else []),
        "`loopagent train child --out runs/embedded-child --device cuda --workers 12` (presets in",
        "`loopagent/training/trainer.py`; deterministic by seed, resumable; `--device cpu` runs the same",
        "steps, at about 6 s a step on 2 CPU cores). The data are a function of the seed; GPU kernels",
        "may make a retrained model differ from the shipped one in the last bits.",
        "",
        "## Data",
        "",
        "Generated on the fly from seeded families in `loopagent.evals` (nothing downloaded):",
        "",
        f"- child: sections of {_span(child['config']['statements'])} statements over single-letter variables",
        f"  (`q=a; c=5; a=c ...`) with one chain of {_span(child['config']['train_hops'])} hops and distractor chains,",
        f"  then {child['config']['queries']} queries (`?q ?c ...`, the chain's head first). Latent-step supervision:",
        "  after `k` loops the query position is trained to hold where its chain stands after `k` lookups",
        "  (`q=a; a=c; c=5 ?q`: `a` after 1 loop, `c` after 2, `5` from 3 on), for every `k` up to",
        f"  {child['config']['loops_max']}, so each loop of the core resolves one hop.",
        "- root: questions of three families (needle in a document, a section's variable, counting a value",
        "  over a range of sections; section numbers of 1-5 digits) in the training phrasings of",
        "  `loopagent.evals.phrasings` (8-14 per family), lower-, upper-, title- or unchanged case, and",
        "  questions of none of them (short ones, and long ones with a preamble, ids or code names, answer",
        "  options and an instruction, in wordings of none of the eval tasks); the REPL program for each (for",
        "  the last: a look at the context), the",
        "  REPL output, and `FINAL('...')` (a child reply that is a variable name is passed on as is).",
        "  A needle program lists every magic number with its key (`re.findall`), up to three other",
        "  needles among them; the root answers with the one whose key the question names, so no key is",
        "  ever copied into code.",
        "  Needle keys are random characters or made-up words, never a word of the `sniah` task's key",
        "  vocabulary; held-out phrasings and that vocabulary are kept for the evaluation below.",
        "",
        "## Quality (seed 10000; `python -m loopagent.training.quality`)",
        "",
        "Child alone, first-turn accuracy on held-out sections by chain length and loop budget:",
        "",
        *table,
        "",
        *_loop_summary(hops, loops, child["config"]["loops_max"]),
        "",
        *_fact_lines(quality.get("child_fact_sentences", {})),
        "Root and child embedded, through the evals runner, training distribution and held-out apart:",
        "",
        "| run | distribution | accuracy |",
        "|---|---|---|",
        *(f"| `{key}` | {distribution} | {_accuracy(quality[key])} |"
          for key, _, _, _, distribution in FAMILY_RUNS if key in quality),
        "",
        (f"- 4-hop questions over a 200K-character document by child loops (evals runner, `chains`): "
         f"{json.dumps(chains)}"),
        (f"- Root REPL cells over all runs above: {cells.get('ok_rate', 0):.0%} of {cells.get('cells', 0)} ran "
         f"without error, {cells.get('syntax_error_rate', 0):.1%} had a syntax error."),
        (f"- On questions of tasks it never trained on ({', '.join(FOREIGN_TASKS)}): "
         f"{foreign.get('cells', 0)} cells, {foreign.get('syntax_error_rate', 0):.1%} with a syntax error."),
        "",
        "## What it can and cannot do",
        "",
        "- It handles the three trained question families (`What is the special magic number for KEY?`,",
        "  `In section N, what is the value of v?`, `In sections A to B, how many times does v equal d?`) in",
        "  the phrasings above and rewordings near them, with keys of any letters and digits, over documents",
        "  in those formats; the table above shows how much holds off the training phrasings.",
        "- Any other question is meant to get a look at the context (`print(str(context)[:100])`) and",
        "  `FINAL('not found')`; the syntax-error share on other tasks' questions above shows how often",
        "  its program does not parse there. It does not read free text, follow instructions or know any facts.",
        "- The child needs at least as many loops as its chain has hops. With fewer it answers the",
        "  variable the chain has reached (`a`, `c`), which is wrong as an answer; a chain of `h` hops is",
        "  exact from `h` loops on. It was trained on 1-8 loops and chains of up to 6 hops; the table",
        "  above shows how far past that it holds.",
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
