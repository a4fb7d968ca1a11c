"""Pages for one run and for two runs side by side.

Example::

    from loopagent.view.render import write_run_page, write_compare_page

    write_run_page("runs/x.jsonl")                       # runs/x.html
    write_compare_page("runs/a.jsonl", "runs/b.jsonl", "a-vs-b.html")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from loopagent.view.load import Log, load_log
from loopagent.view.model import page_data
from loopagent.view.page import render_page, write_atomic

PathLike = str | os.PathLike[str]


def run_html(log: Log, *, follow: dict[str, Any] | None = None) -> str:
    """The page of one run; ``follow`` (endpoint, offset, interval_ms) makes it poll a server."""
    data: dict[str, Any] = {"mode": "run", "run": page_data(log)}
    if follow is not None:
        data["follow"] = follow
    query = data["run"]["query"] or log.path.name
    return render_page(data, title=f"loopagent · {query[:80]}")


def write_run_page(log_path: PathLike, out: PathLike | None = None) -> Path:
    """Write the page of the run logged at ``log_path`` (default: next to it, ``.html``)."""
    log = load_log(log_path)
    target = Path(out) if out is not None else log.path.with_suffix(".html")
    write_atomic(target, run_html(log))
    return target


def side_label(log: Log) -> str:
    """A short name for a run in a comparison: its file and the loop budgets it ran with."""
    start = next((e for e in log.events if e.type == "run_start" and e.parent_id is None), None)
    if start is None:
        return log.path.stem
    cfg = start.config
    parts = []
    for role in ("root", "child"):
        spec = cfg.get(role) or {}
        if spec.get("name"):
            loops = f" loops {spec['default_loops']}" if spec.get("default_loops") is not None else ""
            parts.append(f"{role} {spec['name']}{loops}")
    return f"{log.path.stem} · " + ", ".join(parts)


def compare_html(a: Log, b: Log) -> str:
    """Two runs side by side, aligned by root turn."""
    sides = [{"label": side_label(log), "run": page_data(log, prefix=p)} for log, p in ((a, "a-"), (b, "b-"))]
    if sides[0]["label"] == sides[1]["label"]:
        sides[0]["label"], sides[1]["label"] = f"A · {sides[0]['label']}", f"B · {sides[1]['label']}"
    return render_page({"mode": "compare", "sides": sides}, title=f"loopagent · {a.path.stem} vs {b.path.stem}")


def write_compare_page(a: PathLike, b: PathLike, out: PathLike | None = None) -> Path:
    """Write the side-by-side page of two logs (default: ``compare-A-B.html`` next to A)."""
    left, right = load_log(a), load_log(b)
    target = Path(out) if out is not None else left.path.with_name(f"compare-{left.path.stem}-{right.path.stem}.html")
    write_atomic(target, compare_html(left, right))
    return target

