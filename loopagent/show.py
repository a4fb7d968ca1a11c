"""Render a trajectory log as a terminal tree (``loopagent show RUN.jsonl``)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from rich.markup import escape
from rich.tree import Tree

from loopagent.trajectory import FinalAnswer, LimitHit, ReplExec, RootTurn, RunEnd, RunStart, SubCall


def _short(text: str | None, width: int) -> str:
    if text is None:
        return ""
    flat = " ".join(text.split())
    return escape(flat if len(flat) <= width else flat[: width - 1] + "…")


def _loops(chosen: int | None, executed: float | None) -> str:
    if chosen is None:
        return ""
    done = f" → {executed:g}" if executed is not None and executed != chosen else ""
    return f" [magenta]loops {chosen}{done}[/]"


def _tokens(usage: dict[str, Any]) -> str:
    if not usage:
        return ""
    text = f" [dim]{usage.get('prompt_tokens', 0):,}+{usage.get('completion_tokens', 0):,} tok"
    if usage.get("loop_tokens"):
        text += f", {usage['loop_tokens']:,} loop-tok"
    if usage.get("usd"):
        text += f", ${usage['usd']:.4f}"
    return text + "[/]"


def render(events: list[Any], *, width: int = 100) -> Tree:
    """A rich Tree of the runs in ``events`` (children nested under their calls)."""
    by_run: dict[str, list[Any]] = defaultdict(list)
    roots: list[str] = []
    for event in events:
        if event.run_id not in by_run and event.parent_id is None:
            roots.append(event.run_id)
        by_run[event.run_id].append(event)
    tree = Tree("[bold]trajectory[/]")
    for run_id in roots:
        _render_run(tree, run_id, by_run, width)
    return tree


def _render_run(parent: Tree, run_id: str, by_run: dict[str, list[Any]], width: int) -> None:
    events = by_run.get(run_id, [])
    start = next((e for e in events if isinstance(e, RunStart)), None)
    label = f"[bold cyan]run {run_id}[/] depth {events[0].depth if events else '?'}"
    if start is not None:
        cfg = start.config
        label += f"  [dim]root={cfg.get('root', {}).get('name')} child={cfg.get('child', {}).get('name')} "
        label += f"policy={cfg.get('loop_policy', {}).get('name')} context={start.context.get('type')}[/]"
        label += f"\n[yellow]Q:[/] {_short(start.query, width)}"
    node = parent.add(label)
    turn: Tree | None = None
    pending: list[SubCall] = []
    for event in events:
        if isinstance(event, RootTurn):
            turn = node.add(
                f"[bold]turn {event.iteration + 1}[/]{_loops(event.loops_chosen, event.loops_executed)}"
                f"{_tokens(event.usage)}  {_short(event.completion, width)}"
            )
        elif isinstance(event, SubCall):
            pending.append(event)
        elif isinstance(event, ReplExec):
            host = turn if turn is not None else node
            status = "[red]✗ " + escape(event.error_type or "error") + "[/]" if event.error else "[green]✓[/]"
            exec_node = host.add(f"repl {status} [dim]{event.duration_s * 1000:.1f} ms[/]  {_short(event.code, width)}")
            for call in pending:
                _render_call(exec_node, call, by_run, width)
            pending.clear()
            if event.stdout:
                exec_node.add(f"[dim]out:[/] {_short(event.stdout, width)}")
            if event.error:
                exec_node.add(f"[red]{_short(event.error.splitlines()[-1], width)}[/]")
        elif isinstance(event, LimitHit):
            node.add(f"[red]limit: {escape(event.reason)}[/] {_short(event.detail, width)}")
        elif isinstance(event, FinalAnswer):
            node.add(f"[bold green]answer ({event.source}):[/] {_short(event.answer, width)}")
        elif isinstance(event, RunEnd):
            total = event.usage.get("total", {})
            node.add(
                f"[dim]end: {escape(event.reason)}, {event.iterations} turns, {event.wall_s:.2f} s, "
                f"{total.get('calls', 0)} calls, "
                f"{total.get('prompt_tokens', 0) + total.get('completion_tokens', 0):,} tokens, "
                f"{total.get('loop_tokens', 0):,} loop-tokens[/]"
            )
    for call in pending:  # calls of a cell that never finished (killed run)
        _render_call(node, call, by_run, width)


def _render_call(parent: Tree, call: SubCall, by_run: dict[str, list[Any]], width: int) -> None:
    requested = f" [dim](asked {call.loops_requested})[/]" if call.loops_requested is not None else ""
    head = (f"[blue]{call.kind}[/]#{call.index} → {escape(call.model)}"
            f"{_loops(call.loops_chosen, call.loops_executed)}{requested}{_tokens(call.usage)}")
    node = parent.add(f"{head}  {_short(call.prompt, width // 2)}")
    if call.error:
        node.add(f"[red]error:[/] {_short(call.error, width)}")
    elif call.response is not None:
        node.add(f"[dim]reply:[/] {_short(call.response, width)}")
    if call.child_run_id:
        _render_run(node, call.child_run_id, by_run, width)
