"""Reports of an eval directory: ``OUT/report.md`` with tables and ``OUT/plots/*.png``.

Works on whatever ``results.jsonl`` holds, so a killed or still-running sweep can be
reported (the header says how many of the expected records exist).

Accuracy is the mean score of a configuration with a 95% confidence interval: the
Wilson score interval when every score in the directory is 0 or 1, otherwise a
percentile bootstrap (2,000 resamples of the items, fixed seed). Runs that crashed
count as score 0 and are listed.

Example::

    from loopagent.evals.report import write_report
    path = write_report("evals/out/sniah")    # -> evals/out/sniah/report.md
"""

from __future__ import annotations

import math
import os
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loopagent.evals.grid import format_length
from loopagent.evals.store import (
    MANIFEST,
    RESULTS,
    Record,
    ResultsNotFound,
    latest_records,
    load_records,
    read_manifest,
)

REPORT = "report.md"
PLOTS = "plots"
BOOTSTRAP_RESAMPLES = 2_000
Z95 = 1.959963984540054


# -- statistics ---------------------------------------------------------------------------------
def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion (95% by default)."""
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_interval(scores: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean."""
    n = len(scores)
    if n == 0:
        return (math.nan, math.nan)
    if n == 1 or min(scores) == max(scores):
        return (float(scores[0]), float(scores[0])) if n == 1 else (float(min(scores)), float(max(scores)))
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(scores, k=n)) / n for _ in range(resamples))
    lo = means[int(math.floor((1 - level) / 2 * (resamples - 1)))]
    hi = means[int(math.ceil((1 + level) / 2 * (resamples - 1)))]
    return (lo, hi)


def accuracy_interval(scores: Sequence[float], binary: bool) -> tuple[float, float]:
    if binary:
        return wilson_interval(sum(scores), len(scores))
    return bootstrap_interval(scores)


def pareto_front(points: Sequence[tuple[float, float, str]]) -> list[str]:
    """Names of the points (cost, accuracy, name) that no other point beats: nothing
    at most as costly is at least as accurate and better in one of the two."""
    front = []
    for cost, acc, name in points:
        dominated = any(
            (c <= cost and a >= acc) and (c < cost or a > acc) for c, a, other in points if other != name
        )
        if not dominated:
            front.append(name)
    return front


# -- grouping ---------------------------------------------------------------------------------
class _Group:
    """Records of one configuration (optionally at one length)."""

    def __init__(self, records: list[Record]) -> None:
        self.records = records
        self.scores = [r.score for r in records]

    @property
    def n(self) -> int:
        return len(self.records)

    @property
    def accuracy(self) -> float:
        return sum(self.scores) / len(self.scores) if self.scores else math.nan

    def mean(self, attr: str) -> float:
        values = [_get(r, attr) for r in self.records]
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else math.nan

    def usd(self) -> float | None:
        values = [r.usage.usd for r in self.records if r.usage.usd is not None]
        return sum(values) / len(self.records) if values else None


def _get(r: Record, attr: str) -> float | None:
    if attr.startswith("usage."):
        return getattr(r.usage, attr.split(".", 1)[1])
    if attr == "overhead_s":
        return r.overhead_s
    return getattr(r, attr)


def _config_order(records: list[Record], manifest: dict[str, Any] | None) -> list[str]:
    order = list((manifest or {}).get("configs") or [])
    for r in records:
        if r.config not in order:
            order.append(r.config)
    present = {r.config for r in records}
    return [c for c in order if c in present]


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _fmt_int(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.0f}"


def _fmt_ci(ci: tuple[float, float]) -> str:
    if any(math.isnan(x) for x in ci):
        return "-"
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _cell(v: int | None) -> str:
    return "-" if v is None else str(v)


# -- the report -----------------------------------------------------------------------------
def write_report(out_dir: str | os.PathLike[str], *, plots: bool = True) -> Path:
    """Write ``OUT/report.md`` (and ``OUT/plots/*.png`` when matplotlib is installed)
    from the records so far; returns the report's path."""
    out = Path(out_dir)
    if not (out / RESULTS).exists() and not (out / MANIFEST).exists():
        raise ResultsNotFound(f"{out} holds no {RESULTS} or {MANIFEST}: not an eval output directory; "
                              "pass the --out of `loopagent eval`")
    manifest = read_manifest(out)
    config = (manifest or {}).get("config", {})
    records = latest_records(load_records(out))
    binary = all(r.score in (0.0, 1.0) for r in records)
    ci_method = ("Wilson score interval (all scores are 0 or 1)" if binary else
                 f"percentile bootstrap over items ({BOOTSTRAP_RESAMPLES:,} resamples; scores are fractional)")
    order = _config_order(records, manifest)
    by_config: dict[str, list[Record]] = defaultdict(list)
    by_config_length: dict[tuple[str, int], list[Record]] = defaultdict(list)
    for r in records:
        by_config[r.config].append(r)
        by_config_length[(r.config, r.length)].append(r)
    lengths = sorted({r.length for r in records} | set(config.get("lengths") or []))
    expected = len((manifest or {}).get("configs") or []) * len(config.get("lengths") or []) * int(config.get("n") or 0)
    done = sum(1 for r in records if r.config in set((manifest or {}).get("configs") or order))

    lines: list[str] = [f"# Eval report: {config.get('task', records[0].task if records else '?')}", ""]
    status = ("complete" if expected and done >= expected else
              f"partial: {done:,} of {expected:,} runs" if expected else f"{done:,} runs")
    lines += [
        f"- results: {len(records):,} records ({status}); generated {time.strftime('%Y-%m-%d %H:%M:%S')}",
        f"- root: `{config.get('root')}`, child: `{config.get('child')}`",
        f"- grid: root loops {config.get('root_loops')}, child loops {config.get('child_loops')}, "
        f"depths {config.get('depths')}, "
        f"lengths {[format_length(x) for x in config.get('lengths') or []]}, n = {config.get('n')} per length, "
        f"seed {config.get('seed')}",
        f"- baselines: {', '.join(config.get('baselines') or []) or 'none'}"
        + (f" (root_only sees the first {config.get('baseline_chars'):,} characters)"
           if "root_only" in (config.get("baselines") or []) else ""),
    ]
    if config.get("task_options"):
        lines.append(f"- task options: {config['task_options']}")
    if config.get("rlm_options"):
        lines.append(f"- RLM options: {config['rlm_options']}")
    lines += [f"- accuracy = mean score; 95% CI: {ci_method}; crashed runs count as 0", ""]
    if not records:
        lines += ["No results yet.", ""]
        path = out / REPORT
        path.write_text("\n".join(lines))
        return path

    # accuracy by configuration
    lines += ["## Accuracy by configuration (all lengths)", "",
              "| config | kind | root loops | child loops | depth | runs | accuracy | 95% CI | finished | errors | "
              "turns | calls | loop-tokens | USD | wall s |",
              "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    groups = {key: _Group(by_config[key]) for key in order}
    for key in order:
        g = groups[key]
        first = g.records[0]
        finished = sum(r.finished for r in g.records) / g.n
        errors = sum(r.error is not None for r in g.records)
        usd = g.usd()
        lines.append(
            f"| `{key}` | {first.kind} | {_cell(first.root_loops)} | {_cell(first.child_loops)} | "
            f"{_cell(first.depth)} | {g.n} | "
            f"{_fmt(g.accuracy)} | {_fmt_ci(accuracy_interval(g.scores, binary))} | {finished:.0%} | {errors} | "
            f"{_fmt(g.mean('iterations'), 1)} | {_fmt(g.mean('usage.calls'), 1)} | "
            f"{_fmt_int(g.mean('usage.loop_tokens'))} | "
            f"{_fmt(usd, 4) if usd is not None else '-'} | {_fmt(g.mean('wall_s'), 2)} |"
        )
    lines.append("")

    # accuracy by length
    lines += ["## Accuracy by length", "", "Mean score [95% CI] (runs).", "",
              "| config | " + " | ".join(format_length(x) for x in lengths) + " |",
              "|---|" + "---|" * len(lengths)]
    for key in order:
        cells = []
        for length in lengths:
            rs = by_config_length.get((key, length), [])
            if not rs:
                cells.append("-")
                continue
            scores = [r.score for r in rs]
            cells.append(f"{_fmt(sum(scores) / len(scores))} {_fmt_ci(accuracy_interval(scores, binary))} ({len(rs)})")
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    lines.append("")

    # Pareto fronts
    cost_axes = _cost_axes(order, groups)
    for label, attr, points in cost_axes:
        front = pareto_front(points)
        lines += [f"## Pareto front: accuracy vs {label}", "",
                  "Configurations no other one beats on both accuracy and cost (mean per run, all lengths).", "",
                  f"| config | accuracy | {label} |", "|---|---:|---:|"]
        for cost, acc, key in sorted(points):
            if key in front:
                lines.append(f"| `{key}` | {_fmt(acc)} | {_fmt(cost, 4) if attr == 'usd' else _fmt_int(cost)} |")
        lines.append("")

    # time and overhead
    ok = [r for r in records if r.error is None]
    if ok:
        model = sum(r.model_time_s for r in ok)
        overhead = sum(r.overhead_s for r in ok)
        setup = sum(r.setup_s for r in ok)
        controller = sum(r.run_s - r.model_time_s for r in ok)
        runner = sum(r.wall_s - r.setup_s - r.run_s for r in ok)
        k = len(ok)
        pct = (lambda x: f"{x / model:.1%}") if model > 0 else (lambda x: "-")
        lines += ["## Time per run", "",
                  "Means over runs that did not crash. Model time is the sum of model-call times (overlapping "
                  "concurrent child calls add up, so overhead can be negative for fan-out runs).", "",
                  "| | mean s | % of model time |", "|---|---:|---:|",
                  f"| wall (in the runner) | {sum(r.wall_s for r in ok) / k:.4f} | {pct(sum(r.wall_s for r in ok))} |",
                  f"| model calls | {model / k:.4f} | {pct(model)} |",
                  f"| overhead = wall - model | {overhead / k:.4f} | {pct(overhead)} |",
                  f"| - sandbox start + context load | {setup / k:.4f} | {pct(setup)} |",
                  f"| - controller + REPL outside model calls | {controller / k:.4f} | {pct(controller)} |",
                  f"| - runner (scheduling, scoring, logs, records) | {runner / k:.4f} | {pct(runner)} |", ""]

    # plots
    if plots:
        lines += _plots(out, order, groups, by_config_length, lengths, binary, cost_axes)

    # errors
    crashed = [r for r in records if r.error]
    if crashed:
        lines += ["## Crashed runs", "", f"{len(crashed)} runs crashed (scored 0). First ones:", ""]
        for r in crashed[:10]:
            lines.append(f"- `{r.config}` {r.item_id}: {r.error.splitlines()[0][:300]}")
        lines.append("")
    reasons: dict[str, int] = defaultdict(int)
    for r in records:
        reasons[r.reason] += 1
    lines += ["## How runs ended", "", "| reason | runs |", "|---|---:|"]
    lines += [f"| {reason} | {count} |" for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1])]
    lines.append("")

    path = out / REPORT
    tmp = path.with_name(f".{REPORT}.tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)
    return path


def _cost_axes(order: list[str], groups: dict[str, _Group]) -> list[tuple[str, str, list[tuple[float, float, str]]]]:
    axes = []
    tokens = [(groups[k].mean("usage.loop_tokens"), groups[k].accuracy, k) for k in order]
    if any(c > 0 for c, _, _ in tokens):
        axes.append(("loop-tokens per run", "loop_tokens", tokens))
    usd = [(groups[k].usd(), groups[k].accuracy, k) for k in order]
    usd_known = [(c, a, k) for c, a, k in usd if c is not None]
    if usd_known and any(c > 0 for c, _, _ in usd_known):
        axes.append(("USD per run", "usd", usd_known))
    return axes


# -- plots ---------------------------------------------------------------------------------------
def _plots(out: Path, order: list[str], groups: dict[str, _Group],
           by_config_length: dict[tuple[str, int], list[Record]], lengths: list[int], binary: bool,
           cost_axes: list[tuple[str, str, list[tuple[float, float, str]]]]) -> list[str]:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return ["## Plots", "", "matplotlib is not installed: `pip install 'loopagent[evals]'` for plots.", ""]
    plot_dir = out / PLOTS
    plot_dir.mkdir(exist_ok=True)
    lines = ["## Plots", ""]

    def save(fig: Any, name: str, title: str) -> None:
        fig.tight_layout()
        fig.savefig(plot_dir / name, dpi=110)
        lines.extend([f"### {title}", "", f"![{title}]({PLOTS}/{name})", ""])

    def err(scores: list[float]) -> tuple[float, float, float]:
        acc = sum(scores) / len(scores)
        lo, hi = accuracy_interval(scores, binary)
        return acc, max(0.0, acc - lo), max(0.0, hi - acc)

    first = {k: groups[k].records[0] for k in order}

    # accuracy vs child loops: one line per (root loops, depth), one panel per length
    rlm_keys = [k for k in order if first[k].kind == "rlm" and first[k].child_loops is not None]
    if rlm_keys:
        shown = [length for length in lengths if any(by_config_length.get((k, length)) for k in rlm_keys)]
        fig = Figure(figsize=(4.2 * len(shown) + 1.5, 3.8))
        axes = [fig.add_subplot(1, len(shown), i + 1) for i in range(len(shown))]
        for ax, length in zip(axes, shown):
            lines_by: dict[tuple[int | None, int | None], list[tuple[int, list[float]]]] = defaultdict(list)
            for k in rlm_keys:
                rs = by_config_length.get((k, length))
                if rs:
                    lines_by[(first[k].root_loops, first[k].depth)].append(
                        (first[k].child_loops, [r.score for r in rs]))  # type: ignore[arg-type]
            for (rl, d), pts in sorted(lines_by.items(), key=lambda kv: (kv[0][0] or 0, kv[0][1] or 0)):
                pts.sort()
                xs = [p[0] for p in pts]
                es = [err(p[1]) for p in pts]
                label = (f"root loops {rl}, " if rl is not None else "") + f"depth {d}"
                ax.errorbar(xs, [e[0] for e in es], yerr=[[e[1] for e in es], [e[2] for e in es]], marker="o",
                            capsize=3, label=label)
            ax.set_xscale("log", base=2)
            ticks = sorted({first[k].child_loops for k in rlm_keys})  # type: ignore[type-var]
            ax.set_xticks(ticks)
            ax.set_xticklabels([str(t) for t in ticks])
            ax.set_xlabel("child loops")
            ax.set_ylabel("accuracy")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"length {format_length(length)}")
            for k in order:
                if first[k].kind == "root_only" and by_config_length.get((k, length)):
                    scores = [r.score for r in by_config_length[(k, length)]]
                    ax.axhline(sum(scores) / len(scores), linestyle="--", color="grey", linewidth=1)
                    ax.annotate(k, (ax.get_xlim()[0], sum(scores) / len(scores)), fontsize=7, color="grey",
                                xytext=(2, 2), textcoords="offset points")
            ax.grid(alpha=0.3)
        axes[-1].legend(fontsize=7, loc="best")
        save(fig, "accuracy_vs_child_loops.png", "Accuracy vs child loops")
    else:
        lines += ["(No accuracy-vs-child-loops plot: the child model is not looped.)", ""]

    # accuracy vs length: one line per configuration
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for k in order:
        pts = [(length, [r.score for r in by_config_length[(k, length)]]) for length in lengths
               if by_config_length.get((k, length))]
        if not pts:
            continue
        es = [err(p[1]) for p in pts]
        style = "--" if first[k].kind != "rlm" else "-"
        ax.errorbar([p[0] for p in pts], [e[0] for e in es], yerr=[[e[1] for e in es], [e[2] for e in es]],
                    marker="o", capsize=3, linestyle=style, label=k)
    if len(lengths) > 1:
        ax.set_xscale("log")
    ax.set_xticks(lengths)
    ax.set_xticklabels([format_length(x) for x in lengths])
    ax.minorticks_off()
    ax.set_xlabel("context length (characters)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    save(fig, "accuracy_vs_length.png", "Accuracy vs length")

    # accuracy vs cost with the Pareto front
    for label, attr, points in cost_axes:
        front = set(pareto_front(points))
        fig = Figure(figsize=(7.5, 4.5))
        ax = fig.add_subplot(1, 1, 1)
        for cost, acc, k in points:
            on = k in front
            ax.scatter([cost], [acc], s=40 if on else 22, color="tab:red" if on else "tab:blue", zorder=3)
            ax.annotate(k, (cost, acc), fontsize=6, xytext=(3, 3), textcoords="offset points")
        fp = sorted((c, a) for c, a, k in points if k in front)
        if fp:
            xs, ys = [fp[0][0]], [fp[0][1]]
            for c, a in fp[1:]:
                xs += [c, c]
                ys += [ys[-1], a]
            ax.plot(xs, ys, color="tab:red", linewidth=1.2, label="Pareto front")
            ax.legend(fontsize=8, loc="lower right")
        costs = [c for c, _, _ in points]
        if min(costs) > 0 and max(costs) / min(costs) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(f"mean {label}")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        save(fig, f"pareto_{attr}.png", f"Accuracy vs {label}")
    if not any(attr == "loop_tokens" for _, attr, _ in cost_axes):
        lines += ["(No loop-token plot: no run used a looped model.)", ""]
    if not any(attr == "usd" for _, attr, _ in cost_axes):
        lines += ["(No USD plot: no model had a known price.)", ""]
    return lines


__all__ = ["accuracy_interval", "bootstrap_interval", "pareto_front", "wilson_interval", "write_report"]
