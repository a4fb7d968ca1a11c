"""The ``loopagent`` command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from loopagent import __version__

app = typer.Typer(
    name="loopagent",
    help=(
        "Answer questions over inputs far longer than any context window: a root model writes "
        "Python over the input in a sandboxed REPL and calls (looped) child models on pieces, "
        "each call with its own loop budget."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
_console = Console()


def _version(value: bool) -> None:
    if value:
        _console.print(f"loopagent {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    pass


def _fail(message: str, code: int = 2) -> None:
    _console.print(f"[red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@app.command()
def run(
    query: Annotated[str, typer.Argument(help="The question to answer.")],
    context: Annotated[
        Optional[Path], typer.Option("--context", "-c", help="A file or directory to answer over; '-' reads text from stdin.")
    ] = None,
    root: Annotated[str, typer.Option(help="Root model spec, e.g. litellm:openai/gpt-4o-mini, served:URL, scripted:FILE.")] = ...,  # type: ignore[assignment]
    child: Annotated[Optional[str], typer.Option(help="Child model spec (default: the root model).")] = None,
    root_loops: Annotated[Optional[int], typer.Option(help="Loop budget of the root model (looped models).")] = None,
    child_loops: Annotated[Optional[int], typer.Option(help="Default loop budget of child calls (looped models).")] = None,
    policy: Annotated[str, typer.Option(help="Loop policy: fixed, by-depth, budgeted, adaptive.")] = "fixed",
    max_depth: Annotated[int, typer.Option(help="Levels of RLMs: 1 = rlm_query is a plain child call.")] = 1,
    max_iterations: Annotated[int, typer.Option(help="Root turns per run.")] = 20,
    max_loop_tokens: Annotated[Optional[int], typer.Option(help="Budget: tokens x loops over all calls.")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="Budget: prompt + completion tokens over all calls.")] = None,
    max_usd: Annotated[Optional[float], typer.Option(help="Budget: USD over all calls (known prices).")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Budget: wall-clock seconds for the run.")] = None,
    max_errors: Annotated[int, typer.Option(help="Stop after this many failing turns in a row.")] = 5,
    concurrency: Annotated[int, typer.Option(help="Child calls in flight at once.")] = 64,
    log_dir: Annotated[Path, typer.Option(help="Where the trajectory JSONL goes.")] = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Answer QUERY over a long context with a Recursive Language Model.

    Example: loopagent run "Which city is named most often?" -c book.txt --root litellm:openai/gpt-4o-mini
    """
    from loopagent import RLM, LoopagentError, model
    from loopagent.environments import SandboxError

    ctx: object = None
    if context is not None:
        ctx = sys.stdin.read() if str(context) == "-" else context
    try:
        rlm = RLM(
            root=model(root, loops=root_loops),
            child=model(child, loops=child_loops) if child else None,
            max_depth=max_depth,
            max_iterations=max_iterations,
            budget={"max_loop_tokens": max_loop_tokens, "max_tokens": max_tokens, "max_usd": max_usd, "timeout_s": timeout},
            loop_policy=policy,
            max_consecutive_errors=max_errors,
            concurrency=concurrency,
            log_dir=log_dir,
        )
        result = rlm.run(query, ctx)  # type: ignore[arg-type]
    except (LoopagentError, SandboxError, TypeError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    if as_json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
        return
    _print_result(result)


def _print_result(result: object) -> None:
    from loopagent.rlm import Result

    assert isinstance(result, Result)
    status = "[green]final[/]" if result.finished else f"[yellow]{result.reason}[/]"
    _console.print(f"[bold]answer[/] ({status}): {result.answer if result.answer is not None else '(none)'}", highlight=False)
    if result.detail:
        _console.print(f"[dim]{result.detail}[/]", highlight=False)
    table = Table(title=f"usage ({result.iterations} turns, {result.wall_s:.2f} s)")
    for col in ("", "calls", "prompt tok", "completion tok", "loop-tokens", "USD"):
        table.add_column(col, justify="right" if col else "left")
    rows = [("total", result.usage.total)]
    rows += [(f"depth {d}", t) for d, t in sorted(result.usage.by_depth.items())]
    rows += [(name, t) for name, t in result.usage.by_model.items()]
    for label, t in rows:
        usd = f"{t.usd:.4f}" if t.usd is not None else "-"
        table.add_row(label, str(t.calls), f"{t.prompt_tokens:,}", f"{t.completion_tokens:,}", f"{t.loop_tokens:,}", usd)
    _console.print(table)
    if result.trajectory is not None:
        _console.print(f"trajectory: {result.trajectory}  (loopagent show {result.trajectory})", highlight=False)


@app.command()
def show(
    path: Annotated[Path, typer.Argument(help="A trajectory JSONL written by a run.")],
    width: Annotated[int, typer.Option(help="Characters of text shown per line.")] = 100,
) -> None:
    """Show a run's trajectory as a tree: turns, REPL cells, child calls with loop budgets, nested runs."""
    from loopagent.show import render
    from loopagent.trajectory import TrajectoryError, read_trajectory

    if not path.is_file():
        _fail(f"{path} is not a file; pass a .jsonl written by `loopagent run` (see its log_dir)")
    try:
        events = read_trajectory(path)
    except TrajectoryError as e:
        _fail(str(e))
    if not events:
        _fail(f"{path} holds no events")
    _console.print(render(events, width=width))


@app.command()
def sandbox(
    code: Annotated[str, typer.Argument(help="Python code to run; '-' reads it from stdin.")],
    context: Annotated[
        Optional[Path],
        typer.Option("--context", "-c", help="A file or directory loaded as the variable `context`."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds the code may run.")] = 30.0,
    memory_mb: Annotated[int, typer.Option(help="Memory limit of the sandbox worker.")] = 2048,
) -> None:
    """Run code in the sandboxed REPL that model code runs in, and show which isolation applied.

    Example: loopagent sandbox "print(len(context))" --context README.md
    """
    from loopagent.environments import SandboxREPL

    source = sys.stdin.read() if code == "-" else code
    with SandboxREPL(timeout_s=timeout, memory_mb=memory_mb) as repl:
        if context is not None:
            repl.load_context(context)
        result = repl.execute(source)
        table = Table(title="sandbox isolation", show_header=False)
        for key, value in repl.isolation.items():
            table.add_row(key, str(value))
        _console.print(table, style="dim")
    sys.stdout.write(result.stdout)
    if result.error:
        _console.print(result.error, style="red", markup=False, highlight=False)
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
