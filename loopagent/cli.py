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
