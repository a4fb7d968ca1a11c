"""The index page of an eval output directory: one row per item and configuration.

Each run's page is written next to its trajectory (``trajectories/<config>/<item>.html``)
and linked from the index, so the directory can be copied or served as it is.

Example::

    from loopagent.view.index import write_index

    write_index("evals-out/sniah")        # evals-out/sniah/index.html
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from loopagent.evals.store import RESULTS, ResultsNotFound, latest_records, load_records, read_manifest
from loopagent.view.load import ViewError, load_log
from loopagent.view.page import render_page, write_atomic
from loopagent.view.render import PathLike, run_html


def index_data(out_dir: PathLike, *, pages: bool = True) -> dict[str, Any]:
    """The index's data; with ``pages`` each run's page is written next to its log."""
    out = Path(out_dir)
    if not (out / RESULTS).is_file():
        raise ResultsNotFound(f"{out} has no {RESULTS}; pass the --out directory of `loopagent eval`")
    manifest = read_manifest(out) or {}
    records = latest_records(load_records(out))
    rows, warnings = [], []
    for r in records:
        row = {
            "item_id": r.item_id, "config": r.config, "kind": r.kind, "length": r.length, "score": r.score,
            "usd": r.usage.usd, "loop_tokens": r.usage.loop_tokens, "calls": r.usage.calls,
            "tokens": r.usage.prompt_tokens + r.usage.completion_tokens, "wall_s": r.wall_s,
            "reason": "crashed" if r.error else r.reason, "prediction": r.prediction, "error": r.error, "href": None,
        }
        if r.trajectory and pages:
            log_path = out / r.trajectory
            try:
                page = log_path.with_suffix(".html")
                write_atomic(page, run_html(load_log(log_path)))
                row["href"] = Path(os.path.relpath(page, out)).as_posix()
            except ViewError as e:
                warnings.append(f"{r.config} / {r.item_id}: {e}")
        rows.append(row)
    task = (manifest.get("config") or {}).get("task") or (records[0].task if records else out.name)
    return {"mode": "index", "dir": str(out), "task": task,
            "rows": rows, "configs": _by_config(rows), "warnings": warnings}


def _by_config(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["config"], []).append(row)
    summary = []
    for config, group in groups.items():
        known = [g["usd"] for g in group if g["usd"] is not None]
        n = len(group)
        summary.append({
            "config": config, "n": n, "score": sum(g["score"] for g in group) / n,
            "usd": sum(known) if known else None, "loop_tokens": sum(g["loop_tokens"] for g in group),
            "calls": sum(g["calls"] for g in group), "wall_s": sum(g["wall_s"] for g in group) / n,
        })
    return summary


def write_index(out_dir: PathLike, out: PathLike | None = None) -> Path:
    """Write the index page (default ``OUT/index.html``) and every run's page."""
    data = index_data(out_dir)
    target = Path(out) if out is not None else Path(out_dir) / "index.html"
    if out is not None:  # links are relative to the results directory
        rel = Path(os.path.relpath(Path(out_dir), target.parent))
        for row in data["rows"]:
            if row["href"]:
                row["href"] = (rel / row["href"]).as_posix()
    write_atomic(target, render_page(data, title=f"loopagent · eval {data['task']}"))
    return target
