"""Render a trajectory log as a terminal tree (``loopagent show RUN.jsonl``)."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.tree import Tree

from loopagent.runtree import CallNode, ExecNode, RunNode, TurnNode, build_runs
from loopagent.trajectory import CallbackWarning, Compaction, FinalAnswer, LimitHit, RunEnd, ToolCall


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
    """A rich Tree of the runs in ``events`` (children nested under their calls).

    Example: ``Console().print(render(read_trajectory("runs/x.jsonl")))``
    """
    tree = Tree("[bold]trajectory[/]")
    for run in build_runs(events):
        _render_run(tree, run, width)
    return tree


def _render_run(parent: Tree, run: RunNode, width: int) -> None:
    start = run.start
    label = f"[bold cyan]run {run.run_id}[/] depth {run.depth}"
    if start is not None:
        cfg = start.config
        label += f"  [dim]root={cfg.get('root', {}).get('name')} child={cfg.get('child', {}).get('name')} "
        label += f"policy={cfg.get('loop_policy', {}).get('name')} context={start.context.get('type')}[/]"
        label += f"\n[yellow]Q:[/] {_short(start.query, width)}"
    node = parent.add(label)
    for item in run.items:
        if isinstance(item, TurnNode):
            event = item.turn
            turn = node.add(
                f"[bold]turn {event.iteration + 1}[/]{_loops(event.loops_chosen, event.loops_executed)}"
                f"{_tokens(event.usage)}  {_short(event.completion, width)}"
            )
            for cell in item.execs:
                _render_exec(turn, cell, width)
        elif isinstance(item, ExecNode):
            _render_exec(node, item, width)
        elif isinstance(item, Compaction):
            if item.error is not None:
                node.add(f"[yellow]compaction failed:[/] {_short(item.error, width)}")
            else:
                node.add(f"[magenta]compacted[/] {item.turns_folded} turns, {item.tokens_before:,} → "
                         f"{item.tokens_after:,} tokens (window {item.window:,}){_tokens(item.usage)}  "
                         f"{_short(item.summary, width)}")
        elif isinstance(item, CallbackWarning):
            node.add(f"[yellow]warning:[/] {_short(item.message, width)}")
        elif isinstance(item, LimitHit):
            node.add(f"[red]limit: {escape(item.reason)}[/] {_short(item.detail, width)}")
        elif isinstance(item, FinalAnswer):
            node.add(f"[bold green]answer ({item.source}):[/] {_short(item.answer, width)}")
        elif isinstance(item, RunEnd):
            total = item.usage.get("total", {})
            node.add(
                f"[dim]end: {escape(item.reason)}, {item.iterations} turns, {item.wall_s:.2f} s, "
                f"{total.get('calls', 0)} calls, "
                f"{total.get('prompt_tokens', 0) + total.get('completion_tokens', 0):,} tokens, "
                f"{total.get('loop_tokens', 0):,} loop-tokens[/]"
            )
    for child in run.running_children:
        _render_run(node, child, width)


def _render_exec(parent: Tree, cell: ExecNode, width: int) -> None:
    event = cell.exec
    if event is None:  # calls of a cell that never finished (killed run)
        for call in cell.calls:
            _render_call(parent, call, width)
        for tool in cell.tools:
            _render_tool(parent, tool, width)
        return
    status = "[red]✗ " + escape(event.error_type or "error") + "[/]" if event.error else "[green]✓[/]"
    exec_node = parent.add(f"repl {status} [dim]{event.duration_s * 1000:.1f} ms[/]  {_short(event.code, width)}")
    for call in cell.calls:
        _render_call(exec_node, call, width)
    for tool in cell.tools:
        _render_tool(exec_node, tool, width)
    if event.stdout:
        exec_node.add(f"[dim]out:[/] {_short(event.stdout, width)}")
    if event.error:
        exec_node.add(f"[red]{_short(event.error.splitlines()[-1], width)}[/]")


def _render_call(parent: Tree, node: CallNode, width: int) -> None:
    call = node.call
    requested = f" [dim](asked {call.loops_requested})[/]" if call.loops_requested is not None else ""
    alias = f" [dim]({escape(call.alias)})[/]" if call.alias else ""
    marks = (" [green](cached)[/]" if call.cached else "") + (f" [dim]({call.parts} pieces)[/]" if call.parts else "")
    head = (f"[blue]{call.kind}[/]#{call.index} → {escape(call.model)}{alias}"
            f"{_loops(call.loops_chosen, call.loops_executed)}{requested}{_tokens(call.usage)}{marks}")
    tree = parent.add(f"{head}  {_short(call.prompt, width // 2)}")
    if call.error:
        tree.add(f"[red]error:[/] {_short(call.error, width)}")
    elif call.response is not None:
        tree.add(f"[dim]reply:[/] {_short(call.response, width)}")
    if node.child is not None:
        _render_run(tree, node.child, width)


def _render_tool(parent: Tree, tool: ToolCall, width: int) -> None:
    head = (f"[cyan]tool[/] {escape(tool.name)}({_short(tool.arguments, width // 2)}) "
            f"[dim]{tool.duration_s * 1000:.1f} ms[/]")
    if tool.error is not None:
        parent.add(f"{head}  [red]{_short(tool.error, width)}[/]")
    else:
        parent.add(f"{head}  [dim]→[/] {_short(tool.result, width)}")
