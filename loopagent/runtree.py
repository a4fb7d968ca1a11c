"""A trajectory's events as a tree of runs (shared by ``loopagent show`` and ``loopagent view``).

A log interleaves the events of a run and of every child run it starts. This module
groups them per run and nests them the way a reader follows a run: turns hold the
REPL cells they triggered, cells hold the sub-calls and tool calls their code made
(each is logged before the cell that made it ends), and a call that started a child RLM holds
that child's run.

Example::

    from loopagent.runtree import build_runs
    from loopagent.trajectory import read_trajectory

    for run in build_runs(read_trajectory("runs/x.jsonl")):
        print(run.run_id, len(run.turns()))
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from loopagent.trajectory import (
    CallbackWarning,
    Compaction,
    FinalAnswer,
    LimitHit,
    ReplExec,
    RootTurn,
    RunEnd,
    RunStart,
    SubCall,
    ToolCall,
)


@dataclass
class CallNode:
    """One sub-call; ``child`` is the run an ``rlm_query`` started (None otherwise)."""

    call: SubCall
    number: int  # position among the run's sub-calls: a stable name while the log grows
    child: RunNode | None = None


@dataclass
class ExecNode:
    """A REPL cell and the calls its code made: sub-calls, and ``tools``, its calls of the
    user's tools in log order. ``exec`` is None for calls whose cell has not ended (a live
    or killed run)."""

    exec: ReplExec | None
    number: int
    calls: list[CallNode] = field(default_factory=list)
    tools: list[ToolCall] = field(default_factory=list)


@dataclass
class TurnNode:
    """A root turn and the REPL cells that ran its code."""

    turn: RootTurn
    execs: list[ExecNode] = field(default_factory=list)


Item = TurnNode | ExecNode | Compaction | CallbackWarning | LimitHit | FinalAnswer | RunEnd


@dataclass
class RunNode:
    """One run: its start, then its items in log order. ``running_children`` are child
    runs already logging whose ``rlm_query`` call has not returned yet."""

    run_id: str
    depth: int
    parent_id: str | None
    start: RunStart | None = None
    items: list[Item] = field(default_factory=list)
    running_children: list[RunNode] = field(default_factory=list)

    @property
    def end(self) -> RunEnd | None:
        return next((i for i in reversed(self.items) if isinstance(i, RunEnd)), None)

    def turns(self) -> list[TurnNode]:
        return [i for i in self.items if isinstance(i, TurnNode)]


def build_runs(events: list[Any]) -> list[RunNode]:
    """The top-level runs of ``events`` (children nested under the calls that started them).

    A run whose parent is not in the log is returned as a top-level run too.
    """
    by_run: dict[str, list[Any]] = defaultdict(list)
    for event in events:
        by_run[event.run_id].append(event)
    nodes = {run_id: _build_run(run_id, evs) for run_id, evs in by_run.items()}
    claimed: set[str] = set()
    for node in nodes.values():
        for call in walk_calls(node):
            child = nodes.get(call.call.child_run_id or "")
            if child is not None and child is not node:
                call.child = child
                claimed.add(child.run_id)
    roots = []
    for run_id, node in nodes.items():
        if run_id in claimed:
            continue
        parent = nodes.get(node.parent_id or "")
        if parent is not None and parent is not node:
            parent.running_children.append(node)
        else:
            roots.append(node)
    return roots


def _build_run(run_id: str, events: list[Any]) -> RunNode:
    node = RunNode(run_id=run_id, depth=events[0].depth, parent_id=events[0].parent_id)
    turn: TurnNode | None = None
    pending: list[CallNode] = []
    tools: list[ToolCall] = []
    n_calls = n_execs = 0
    for event in events:
        if isinstance(event, RunStart):
            node.start = event
        elif isinstance(event, RootTurn):
            turn = TurnNode(event)
            node.items.append(turn)
        elif isinstance(event, SubCall):
            pending.append(CallNode(event, n_calls))
            n_calls += 1
        elif isinstance(event, ToolCall):
            tools.append(event)
        elif isinstance(event, ReplExec):
            cell = ExecNode(event, n_execs, pending, tools)
            n_execs += 1
            pending, tools = [], []
            (turn.execs if turn is not None else node.items).append(cell)
        elif isinstance(event, Compaction | CallbackWarning | LimitHit | FinalAnswer | RunEnd):
            node.items.append(event)
    if pending or tools:  # calls of a cell that has not ended (still running, or the run was killed)
        node.items.append(ExecNode(None, n_execs, pending, tools))
    return node


def walk_calls(node: RunNode) -> list[CallNode]:
    """Every sub-call of ``node`` (not of its children), in log order."""
    found: list[CallNode] = []
    for item in node.items:
        cells = item.execs if isinstance(item, TurnNode) else [item] if isinstance(item, ExecNode) else []
        for cell in cells:
            found += cell.calls
    return sorted(found, key=lambda c: c.number)

