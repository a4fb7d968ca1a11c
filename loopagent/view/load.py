"""Reading trajectory logs for the viewer: whole files, or incrementally while a run writes them.

Unlike :func:`loopagent.trajectory.read_trajectory` this keeps what it skipped, so a
page can say so: a torn last line becomes a warning, not silence. A line of a newer
schema version is refused (its events may mean something this version cannot show).

Example::

    log = load_log("runs/x.jsonl")      # raises ViewError with a readable message
    log.events, log.warnings
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopagent.errors import LoopagentError
from loopagent.trajectory import SCHEMA_VERSION, TrajectoryError, parse_event


class ViewError(LoopagentError, ValueError):
    """A file the viewer cannot show (not a trajectory, a newer schema, no events)."""


class SchemaTooNew(ViewError):
    """A log written by a newer loopagent (its events may mean what this one cannot show)."""


@dataclass
class Log:
    """The validated events of a log and what the page should warn about."""

    path: Path
    events: list[Any] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class LogReader:
    """Reads a log as it grows: each :meth:`poll` returns the events of the lines
    completed since the last one. A line still being written (no newline yet) waits
    for the next poll, so a live run never shows a half event; a bad complete line is
    skipped with a warning, so a live view keeps going.

    Example::

        reader = LogReader("runs/x.jsonl")
        new = reader.poll()      # [] until the run writes more
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.offset = 0  # bytes consumed: always the end of a complete line
        self.lines = 0
        self.events: list[Any] = []
        self.warnings: list[str] = []

    def poll(self) -> list[Any]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self.offset:  # replaced or truncated: start over
            self.offset, self.lines, self.events, self.warnings = 0, 0, [], []
        if size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(size - self.offset)
        cut = data.rfind(b"\n") + 1
        new = []
        for raw in data[:cut].split(b"\n")[:-1]:
            self.lines += 1
            self.offset += len(raw) + 1
            event = self._parse(raw, self.lines)
            if event is not None:
                new.append(event)
        self.events += new
        return new

    def _parse(self, raw: bytes, number: int) -> Any:
        if not raw.strip():
            return None
        try:
            return parse_line(raw, f"{self.path}:{number}")
        except ViewError as e:
            self.warnings.append(f"skipped line {number}: {e}")
            return None


def parse_line(raw: bytes | str, where: str) -> Any:
    """One validated event; ViewError naming ``where`` for anything else."""
    try:
        return parse_event(raw, where)
    except TrajectoryError as e:
        if e.version is not None:
            raise SchemaTooNew(
                f"{where}: written with trajectory schema v{e.version}, newer than this loopagent reads "
                f"(v{SCHEMA_VERSION}); upgrade loopagent to view it"
            ) from None
        raise ViewError(str(e)) from None


def load_log(path: str | os.PathLike[str]) -> Log:
    """Every event of a finished (or killed) run's log.

    A bad last line (the writer died mid-line) is left out with a warning; any other
    bad line, a newer schema or a file with no events raises :class:`ViewError`.
    """
    path = Path(path)
    if not path.is_file():
        raise ViewError(f"{path} is not a file; pass a .jsonl written by `loopagent run` (see its log_dir)")
    numbered = [(n, raw) for n, raw in enumerate(path.read_bytes().splitlines(), 1) if raw.strip()]
    log = Log(path)
    for i, (number, raw) in enumerate(numbered):
        try:
            log.events.append(parse_line(raw, f"{path}:{number}"))
        except SchemaTooNew:
            raise
        except ViewError:
            if i < len(numbered) - 1 or not log.events:
                raise
            log.warnings.append(f"line {number} is incomplete (the run was killed or is still writing): "
                                f"showing the {len(log.events):,} events before it")
    if not log.events:
        raise ViewError(f"{path} holds no loopagent trajectory events")
    return log
