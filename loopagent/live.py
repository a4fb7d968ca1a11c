"""A live terminal view of a run, built on callbacks (what ``loopagent run`` shows on a terminal).

Example::

    from rich.console import Console
    from loopagent.live import LiveProgress

    progress = LiveProgress(Console())
    rlm = RLM(root, callbacks=[progress])
    with progress:
        result = rlm.run("Which ...?", context=text)
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.text import Text


class LiveProgress:
    """Counts a run's events into one line of figures plus the latest event, redrawn as they come.

    Figures: root turns, REPL cells, sub-calls done and in flight (sent and not yet returned),
    child runs going, compactions, tokens, loop-tokens and cost (where prices are known), the
    wall time. A callback object (``on_event`` gets every event); use it as a context manager
    around the run, which starts and stops the display.
    """

    def __init__(self, console: Console | None = None, *, refresh_per_second: float = 8.0) -> None:
        self.console = console if console is not None else Console()
        self.turns = 0
        self.cells = 0
        self.calls_done = 0
        self.calls_failed = 0
        self.compactions = 0
        self.tokens = 0
        self.loop_tokens = 0
        self.usd: float | None = None
        self.latest = ""
        self._in_flight: dict[str, int] = {}  # per run: a run that ends takes its abandoned calls with it
        self._children: set[str] = set()
        self._start = time.monotonic()
        self._live = Live(self.render(), console=self.console, refresh_per_second=refresh_per_second,
                          transient=False, redirect_stdout=False, redirect_stderr=False)

    @property
    def in_flight(self) -> int:
        return sum(self._in_flight.values())

    def _count(self, usage: dict[str, Any]) -> None:
        self.tokens += int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)
        self.loop_tokens += int(usage.get("loop_tokens") or 0)
        if usage.get("usd") is not None:
            self.usd = (self.usd or 0.0) + float(usage["usd"])

    def on_event(self, event: Any) -> None:
        kind, run = event.type, event.run_id
        where = f"depth {event.depth}"
        if kind == "run_start":
            if event.depth:
                self._children.add(run)
            self.latest = f"{where}: run started: {event.query[:80]}"
        elif kind == "root_turn":
            self.turns += event.depth == 0
            self._count(event.usage)
            self.latest = f"{where}: turn {event.iteration + 1} ({event.model})"
        elif kind == "repl_exec":
            self.cells += 1
            self.latest = f"{where}: cell ran in {event.duration_s:.2f} s" + (f", {event.error_type}"
                                                                           if event.error_type else "")
        elif kind == "sub_call_start":
            self._in_flight[run] = self._in_flight.get(run, 0) + 1
        elif kind == "sub_call":
            self._in_flight[run] = max(0, self._in_flight.get(run, 0) - 1)
            self.calls_done += 1
            self.calls_failed += event.error is not None
            if event.child_run_id is None:  # a child run's own events carry its usage
                self._count(event.usage)
            self.latest = f"{where}: {event.kind} -> " + (f"error: {event.error}" if event.error is not None
                                                          else (event.response or "")[:80])
        elif kind == "compaction":
            self.compactions += event.error is None
            self._count(event.usage)
            self.latest = (f"{where}: folded {event.turns_folded} turns, {event.tokens_before:,} -> "
                           f"{event.tokens_after:,} tokens" if event.error is None else f"{where}: {event.error}")
        elif kind == "limit":
            self.latest = f"{where}: limit {event.reason}: {event.detail}"
        elif kind == "run_end":
            self._in_flight.pop(run, None)
            self._children.discard(run)
            if event.depth == 0:
                self.latest = f"done: {event.reason}"
        elif kind == "warning":
            self.latest = f"warning: {event.message}"
        self._live.update(self.render())

    def render(self) -> Group:
        cost = f"${self.usd:.4f}" if self.usd is not None else "$ -"
        failed = f" ({self.calls_failed} failed)" if self.calls_failed else ""
        line = Text.from_markup(
            f"[bold]turns[/] {self.turns}  [bold]cells[/] {self.cells}  [bold]sub-calls[/] {self.calls_done} done"
            f"{failed}, {self.in_flight} in flight  [bold]child runs[/] {len(self._children)}  "
            f"[bold]compactions[/] {self.compactions}  [bold]tokens[/] {self.tokens:,}  "
            f"[bold]loop-tokens[/] {self.loop_tokens:,}  [bold]cost[/] {cost}  "
            f"{time.monotonic() - self._start:.1f} s"
        )
        return Group(line, Text.from_markup(f"[dim]{escape(self.latest[:200])}[/]"))

    def __enter__(self) -> LiveProgress:
        self._start = time.monotonic()
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.update(self.render())
        self._live.stop()
        if not self.console.is_terminal:  # a file gets the last frame without its line end
            self.console.line()
