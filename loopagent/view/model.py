"""A run's events as the page's data: a tree of nodes, usage tables and a timeline.

Everything here is plain JSON-able data; the page's script only draws it. Node ids
are built from run ids and positions within a run, so they stay the same while a
live log grows (a follow page keeps what the reader expanded).

Example::

    data = page_data(load_log("runs/x.jsonl"))
    data["runs"][0]["kids"][0]["k"]     # 'turn'
"""

from __future__ import annotations

from typing import Any

from loopagent.runtree import CallNode, ExecNode, RunNode, TurnNode, build_runs, walk_calls
from loopagent.trajectory import FinalAnswer, LimitHit, RunEnd, ToolCall
from loopagent.view.highlight import tokens
from loopagent.view.load import Log

_USAGE_KEYS = ("calls", "prompt_tokens", "completion_tokens", "loop_tokens", "usd", "wall_s")
#: Lanes of concurrent calls drawn on the timeline; later overlapping calls share the last lane.
MAX_LANES = 24


def page_data(log: Log, *, prefix: str = "") -> dict[str, Any]:
    """The data of one run's page. ``prefix`` keeps node ids apart when two logs share a page."""
    runs = build_runs(log.events)
    top = runs[0] if runs else None
    end = top.end if top is not None else None
    final = next((i for i in reversed(top.items) if isinstance(i, FinalAnswer)), None) if top else None
    return {
        "path": str(log.path),
        "warnings": list(log.warnings),
        "events": len(log.events),
        "query": top.start.query if top is not None and top.start is not None else None,
        "answer": final.answer if final is not None else (end.answer if end is not None else None),
        "finished": end.finished if end is not None else None,
        "reason": end.reason if end is not None else None,
        "done": end is not None,
        "usage": usage_tables(log.events),
        "timeline": timeline(runs, prefix),
        "runs": [_run(r, prefix) for r in runs],
    }


# -- the tree ---------------------------------------------------------------------------------------
def _run(run: RunNode, p: str) -> dict[str, Any]:
    node: dict[str, Any] = {"id": f"{p}r-{run.run_id}", "k": "run", "run_id": run.run_id, "depth": run.depth}
    if run.start is not None:
        cfg = run.start.config
        node.update(
            query=run.start.query,
            context=run.start.context,
            root=(cfg.get("root") or {}).get("name"),
            child=(cfg.get("child") or {}).get("name"),
            policy=(cfg.get("loop_policy") or {}).get("name"),
            max_depth=cfg.get("max_depth"),
            system_prompt=run.start.system_prompt,
        )
    end = run.end
    node["status"] = end.reason if end is not None else "running"
    kids: list[dict[str, Any]] = []
    turns = 0
    for item in run.items:
        if isinstance(item, TurnNode):
            kids.append(_turn(item, run.run_id, turns, p))
            turns += 1
        elif isinstance(item, ExecNode):
            kids.append(_exec(item, run.run_id, p))
        elif isinstance(item, LimitHit):
            kids.append({"id": f"{p}{run.run_id}-l{len(kids)}", "k": "limit", "reason": item.reason,
                         "detail": item.detail})
        elif isinstance(item, FinalAnswer):
            kids.append({"id": f"{p}{run.run_id}-f{len(kids)}", "k": "final", "answer": item.answer,
                         "source": item.source})
        elif isinstance(item, RunEnd):
            kids.append({"id": f"{p}{run.run_id}-e", "k": "end", "reason": item.reason, "finished": item.finished,
                         "iterations": item.iterations, "wall_s": item.wall_s,
                         "usage": item.usage.get("total", {})})
    kids += [_run(child, p) for child in run.running_children]
    node["kids"] = kids
    return node


def _turn(item: TurnNode, run_id: str, n: int, p: str) -> dict[str, Any]:
    t = item.turn
    return {
        "id": f"{p}{run_id}-t{n}", "k": "turn", "n": n + 1, "model": t.model, "prompt": t.prompt,
        "completion": t.completion, "lc": t.loops_chosen, "le": t.loops_executed, "usage": t.usage,
        "kids": [_exec(cell, run_id, p) for cell in item.execs],
    }


def _exec(cell: ExecNode, run_id: str, p: str) -> dict[str, Any]:
    nid = f"{p}{run_id}-x{cell.number}"
    calls = [_call(c, run_id, p) for c in cell.calls]
    node: dict[str, Any] = {"id": nid, "k": "exec" if cell.exec is not None else "pending"}
    if cell.exec is not None:
        e = cell.exec
        node.update(code=tokens(e.code), stdout=e.stdout, error=e.error, error_type=e.error_type,
                    duration_s=e.duration_s, host_calls=e.host_calls, restarted=e.restarted)
    tools = [_tool(t, f"{nid}-k{i}") for i, t in enumerate(cell.tools)]
    if calls:
        kinds: dict[str, int] = {}
        for c in cell.calls:
            kinds[c.call.kind] = kinds.get(c.call.kind, 0) + 1
        group = {"id": f"{nid}-calls", "k": "calls", "count": len(calls), "kinds": kinds,
                 "usage": _sum([c.call.usage for c in cell.calls]), "kids": calls}
        node["kids"] = [group, *tools]
    else:
        node["kids"] = tools
    return node


def _tool(t: ToolCall, nid: str) -> dict[str, Any]:
    return {"id": nid, "k": "tool", "name": t.name, "arguments": t.arguments, "result": t.result, "error": t.error,
            "error_type": t.error_type, "duration_s": t.duration_s}


def _call(item: CallNode, run_id: str, p: str) -> dict[str, Any]:
    c = item.call
    hist = {str(k): v for k, v in sorted(c.exit_histogram.items())} if c.exit_histogram else None
    return {
        "id": f"{p}{run_id}-c{item.number}", "k": "call", "kind": c.kind, "index": c.index, "model": c.model,
        "prompt": c.prompt, "response": c.response, "error": c.error, "lr": c.loops_requested,
        "lc": c.loops_chosen, "le": c.loops_executed, "hist": hist, "usage": c.usage,
        "child_run_id": c.child_run_id, "kids": [_run(item.child, p)] if item.child is not None else [],
    }


# -- usage ------------------------------------------------------------------------------------------
def _sum(usages: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {k: 0 for k in _USAGE_KEYS}
    total["usd"] = None
    for u in usages:
        _add(total, u)
    return total


def _add(total: dict[str, Any], usage: dict[str, Any]) -> None:
    total["calls"] += usage.get("calls", 1)
    for key in ("prompt_tokens", "completion_tokens", "loop_tokens", "wall_s"):
        total[key] += usage.get(key) or 0
    if usage.get("usd") is not None:  # unknown prices stay unknown rather than counting as 0
        total["usd"] = (total["usd"] or 0.0) + usage["usd"]


def usage_tables(events: list[Any]) -> dict[str, Any]:
    """Usage per depth and per model, counted from the model-call events themselves.

    Counting events (not the run's end totals) works for live and killed runs too. An
    ``rlm_query`` sub-call's usage is its child run's total, so it is skipped: the
    child's own events count instead. A sub-call runs one level below its caller.
    """
    total = _sum([])
    by_depth: dict[str, dict[str, Any]] = {}
    by_model: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.type == "root_turn":
            depth = e.depth
        elif e.type == "sub_call" and not e.child_run_id:
            depth = e.depth + 1
        else:
            continue
        # a cached sub-call made no call; a split one made one per piece (its usage says)
        usage = {**e.usage, "calls": e.usage.get("calls", 1)}
        for table, key in ((by_depth, str(depth)), (by_model, e.model)):
            _add(table.setdefault(key, _sum([])), usage)
        _add(total, usage)
    return {"total": total, "by_depth": dict(sorted(by_depth.items(), key=lambda kv: int(kv[0]))),
            "by_model": by_model}


# -- the timeline -----------------------------------------------------------------------------------
def timeline(runs: list[RunNode], prefix: str = "") -> dict[str, Any]:
    """Bars of where the time went, in seconds from the first run's start.

    An event is logged when its work ends, so a bar is ``[ts - duration, ts]``. Lane 0
    holds the top run's model calls, lane 1 its REPL cells, the lanes below every other
    model call and child run, packed so that calls running at the same time overlap
    in separate lanes.
    """
    bars: list[dict[str, Any]] = []
    for top in runs:
        _bars(top, prefix, bars, top=True)
    if not bars:
        return {"bars": [], "wall_s": 0.0, "lanes": 2, "split": {}, "shared": 0}
    t0 = min(b["s"] for b in bars)
    starts = [r.start.ts for r in runs if r.start is not None]
    if starts:
        t0 = min(t0, *starts)
    for b in bars:
        b["s"] = round(b["s"] - t0, 6)
        b["e"] = round(b["e"] - t0, 6)
    wall = max(b["e"] for b in bars)
    ends = [r.end for r in runs if r.end is not None]
    if ends and starts:
        wall = max(wall, max(e.ts for e in ends) - t0)
    lanes, shared = _pack([b for b in bars if b["lane"] < 0])
    model = _union([(b["s"], b["e"]) for b in bars if b["cat"] == "root"])
    repl = _union([(b["s"], b["e"]) for b in bars if b["cat"] == "repl"])
    calls = _union([(b["s"], b["e"]) for b in bars if b["cat"] in ("call", "child")])
    split = {"root model": model, "REPL": repl, "child calls (inside REPL)": calls,
             "waiting (controller, sandbox, log)": max(0.0, wall - model - repl)}
    return {"bars": bars, "wall_s": wall, "lanes": 2 + lanes, "split": split, "shared": shared}


def _bars(run: RunNode, p: str, bars: list[dict[str, Any]], *, top: bool) -> None:
    turns = 0
    for item in run.items:
        if isinstance(item, TurnNode):
            wall = item.turn.usage.get("wall_s")
            if wall:
                bars.append(_bar(item.turn.ts, wall, 0 if top else -1, "root" if top else "call",
                                 f"{p}{run.run_id}-t{turns}", f"turn {turns + 1} · {item.turn.model}"))
            turns += 1
            cells = item.execs
        else:
            cells = [item] if isinstance(item, ExecNode) else []
        for cell in cells:
            if cell.exec is not None and top:
                bars.append(_bar(cell.exec.ts, cell.exec.duration_s, 1, "repl", f"{p}{run.run_id}-x{cell.number}",
                                 f"REPL cell {cell.number + 1}"))
    for call in walk_calls(run):
        cid = f"{p}{run.run_id}-c{call.number}"
        label = f"{call.call.kind}#{call.call.index} · {call.call.model}"
        if call.child is not None:
            child = call.child
            start = child.start.ts if child.start is not None else call.call.ts
            bars.append({"s": start, "e": call.call.ts, "lane": -1, "cat": "child", "id": cid, "label": label})
            _bars(child, p, bars, top=False)
        elif call.call.usage.get("wall_s"):
            bars.append(_bar(call.call.ts, call.call.usage["wall_s"], -1, "call", cid, label))
    for child in run.running_children:
        _bars(child, p, bars, top=False)


def _bar(ts: float, duration: float, lane: int, cat: str, nid: str, label: str) -> dict[str, Any]:
    return {"s": ts - duration, "e": ts, "lane": lane, "cat": cat, "id": nid, "label": label}


def _pack(bars: list[dict[str, Any]]) -> tuple[int, int]:
    """Give each bar the first lane (from 2) free at its start; returns the lanes used and how
    many bars had to share the last lane with a bar they overlap."""
    ends: list[float] = []
    shared = 0
    for b in sorted(bars, key=lambda b: (b["s"], b["e"])):
        lane = next((i for i, end in enumerate(ends) if end <= b["s"]), None)
        if lane is None:
            if len(ends) < MAX_LANES:
                ends.append(b["e"])
                lane = len(ends) - 1
            else:
                lane = len(ends) - 1
                shared += 1
        ends[lane] = max(ends[lane], b["e"])
        b["lane"] = 2 + lane
    return len(ends), shared


def _union(spans: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one span (overlapping calls count once)."""
    total, reach = 0.0, float("-inf")
    for s, e in sorted(spans):
        if e > reach:
            total += e - max(s, reach)
            reach = e
    return round(total, 6)
