"""Trajectory logs: append-only JSONL, one validated event per line.

A run (and every child run it starts) writes its events to one file as they
happen; each line is flushed at once, so a crash or kill leaves a readable log
up to the last event. ``read_trajectory`` validates a log and tolerates a torn
last line.

Events share ``v`` (schema version), ``type``, ``ts``, ``run_id``,
``parent_id`` (the run that started this one, for child runs) and ``depth``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError

from loopagent.errors import LoopagentError

SCHEMA_VERSION = 1


class _Event(BaseModel):
    v: int = SCHEMA_VERSION
    ts: float = Field(default_factory=time.time)
    run_id: str
    parent_id: str | None = None
    depth: int = 0


class RunStart(_Event):
    type: Literal["run_start"] = "run_start"
    query: str
    context: dict[str, Any] = Field(description="Type and size of the context (never its content).")
    config: dict[str, Any]
    system_prompt: str = Field(default="", description="What the root model was told about the REPL and limits.")


class RootTurn(_Event):
    type: Literal["root_turn"] = "root_turn"
    iteration: int
    prompt: str = Field(description="The newest message the model saw this turn.")
    completion: str
    model: str
    loops_chosen: int | None = None
    loops_executed: float | None = None
    usage: dict[str, Any] = Field(default_factory=dict)
    model_input: str | None = Field(
        default=None, description="What the model read, after its chat template, where the backend reports it (local "
                                  "models): a template may drop the system prompt or cut turns.")


class ReplExec(_Event):
    type: Literal["repl_exec"] = "repl_exec"
    iteration: int
    code: str
    stdout: str
    error: str | None = None
    error_type: str | None = None
    duration_s: float
    host_calls: int = 0
    restarted: bool = False


class SubCall(_Event):
    type: Literal["sub_call"] = "sub_call"
    kind: Literal["llm_query", "llm_batch", "rlm_query"]
    index: int = Field(default=0, description="Position within a batch.")
    model: str
    prompt: str
    response: str | None = None
    error: str | None = None
    loops_requested: int | None = Field(default=None, description="loops= passed in the REPL code.")
    loops_chosen: int | None = Field(default=None, description="What the loop policy gave the call.")
    loops_executed: float | None = Field(default=None, description="Mean loops the model actually ran per token.")
    exit_histogram: dict[int, int] | None = None
    child_run_id: str | None = None
    usage: dict[str, Any] = Field(default_factory=dict)
    alias: str | None = Field(default=None, description="The model= name the code chose (RLM(models=...)); "
                              "None for the default child.")
    settings: dict[str, Any] = Field(default_factory=dict, description="max_tokens / temperature the code gave.")
    cached: bool = Field(default=False, description="Answered from the sub-call cache: no call; usage is "
                         "{'calls': 0, 'cache_hits': 1}.")
    parts: int | None = Field(default=None, description="Pieces the prompt was split into (oversize='split'); "
                              "usage sums them.")


class ToolCall(_Event):
    """A call of one of the user's tools from REPL code (see :mod:`loopagent.tools`)."""

    type: Literal["tool_call"] = "tool_call"
    name: str
    arguments: str = Field(description="The call's arguments as code would write them, clipped.")
    result: str | None = Field(default=None, description="What the tool returned (Python literal text), clipped.")
    error: str | None = Field(default=None, description="What the model's code saw instead of a result.")
    error_type: str | None = Field(default=None, description="Exception name, e.g. 'ValueError', 'NotPlainDataError'.")
    duration_s: float


class SubCallStart(_Event):
    """A sub-call was sent (its :class:`SubCall` follows when it returns): what makes calls
    in flight visible to a live view. ``index`` and ``kind`` match the ending event."""

    type: Literal["sub_call_start"] = "sub_call_start"
    kind: Literal["llm_query", "llm_batch", "rlm_query"]
    index: int = 0
    model: str
    loops_chosen: int | None = None


class Compaction(_Event):
    """Older root turns folded into a summary written by the root model (see ``RLM(compact_at=...)``)."""

    type: Literal["compaction"] = "compaction"
    iteration: int = Field(description="The turn about to be taken when the history was compacted.")
    turns_folded: int = Field(description="Turns (a reply and the message after it) folded by this compaction.")
    turns_folded_total: int = Field(description="Turns folded by every compaction of the run so far.")
    tokens_before: int = Field(description="Tokens of the messages before compaction.")
    tokens_after: int = Field(description="Tokens of the messages the next turn sees.")
    window: int = Field(description="The root model's context window the threshold is a fraction of.")
    summary: str = Field(default="", description="The summary the model wrote (clipped like any logged text).")
    model: str
    loops_chosen: int | None = None
    usage: dict[str, Any] = Field(default_factory=dict)
    history_variable: str | None = Field(
        default=None, description="The REPL variable holding every message of the run, when it could be set.")
    error: str | None = Field(default=None, description="Why the history was not compacted (messages unchanged).")


class CallbackWarning(_Event):
    """A callback raised; logged once per callback and run, the run goes on."""

    type: Literal["warning"] = "warning"
    source: str = Field(description="What failed, e.g. the callback's name.")
    message: str


class LimitHit(_Event):
    type: Literal["limit"] = "limit"
    reason: str
    detail: str


class FinalAnswer(_Event):
    type: Literal["final"] = "final"
    answer: str
    source: Literal["FINAL", "FINAL_VAR", "text", "forced", "partial"]


class RunEnd(_Event):
    type: Literal["run_end"] = "run_end"
    answer: str | None
    finished: bool
    reason: str
    iterations: int
    wall_s: float
    usage: dict[str, Any] = Field(default_factory=dict, description="Totals of this run, children included.")


Event = Annotated[
    RunStart | RootTurn | ReplExec | SubCallStart | SubCall | ToolCall | Compaction | LimitHit | FinalAnswer
    | RunEnd | CallbackWarning,
    Field(discriminator="type"),
]
_EVENT = TypeAdapter(Event)


class TrajectoryWriter:
    """Appends events to a JSONL file; safe to share between a run and its children.

    The file (and its folder) is created by the first event, so a run that fails before
    it starts (a bad context, an unreachable model) leaves no empty log behind. Listeners
    (:meth:`subscribe`) get every event written, in order, also when ``path`` is None:
    this is the one place events come from, for the file, callbacks and streams alike.
    """

    def __init__(self, path: str | os.PathLike[str] | None, *, text_limit: int | None = 20_000) -> None:
        self.path = Path(path) if path is not None else None
        self.text_limit = text_limit
        self._lock = threading.Lock()
        self._file: Any = None
        self._closed = False
        self._listeners: list[Callable[[Any], None]] = []

    def subscribe(self, listener: Callable[[Any], None]) -> None:
        """Call ``listener(event)`` after each event is written (under the writer's lock, so
        every listener sees the file's order); it must be quick and must not raise."""
        with self._lock:
            self._listeners.append(listener)

    def clip(self, text: str | None) -> str | None:
        """Cap long texts (prompts of child calls can be whole chunks of the input)."""
        if text is None or self.text_limit is None or len(text) <= self.text_limit:
            return text
        return text[: self.text_limit] + f"\n... [{len(text) - self.text_limit:,} more characters not logged]"

    def write(self, event: _Event) -> None:
        line = _json_line(event) if self.path is not None else ""
        with self._lock:
            if self._closed:
                return
            if self.path is not None:
                if self._file is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
                self._file.write(line)
                self._file.flush()
            for listener in self._listeners:
                listener(event)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._file is not None:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                self._file = None


def _json_line(event: BaseModel) -> str:
    """The event as one JSON line. Texts may hold lone surrogates (REPL output and model code
    carry them through), which have no UTF-8 form: those lines escape them (``\\ud800``),
    which reads back as the same string."""
    try:
        return event.model_dump_json() + "\n"
    except PydanticSerializationError:
        return json.dumps(event.model_dump(mode="json"), ensure_ascii=True) + "\n"


class TrajectoryError(LoopagentError, ValueError):
    """A trajectory file that is not a loopagent log.

    ``version`` is set when a line was written with a newer schema than this loopagent reads;
    ``why`` says what is wrong with a line that is not an event.
    """

    def __init__(self, message: str, *, why: str | None = None, version: int | None = None) -> None:
        super().__init__(message)
        self.why = why
        self.version = version


def read_trajectory(path: str | os.PathLike[str]) -> list[Any]:
    """Validated events of a log.

    A torn last line (a run killed while writing it: no closing newline, the start of an
    event cut anywhere, even inside a character) is skipped. A file that is not UTF-8 text,
    whose lines are not loopagent events, or that a newer loopagent wrote (a higher schema
    version) raises :class:`TrajectoryError`.
    """
    data = Path(path).read_bytes()
    cut = data.rfind(b"\n") + 1
    tail = data[cut:]  # what follows the last newline: empty in a log that was closed
    # the writer puts the newline last, so a torn write is an unterminated start of an event
    torn = tail.lstrip().startswith(b'{"v":')
    body = data[:cut] if torn else data
    try:
        if b"\0" in body:  # valid UTF-8, but JSON lines never hold a raw NUL: a binary file
            raise UnicodeDecodeError("utf-8", body, body.index(b"\0"), body.index(b"\0") + 1, "NUL byte")
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise TrajectoryError(f"{path}: not a trajectory log (not UTF-8 text)") from None
    lines = text.split("\n")
    events = [_parse_line(path, number, line) for number, line in enumerate(lines, 1) if line.strip()]
    if torn:
        try:
            line = tail.decode("utf-8")
            json.loads(line)
        except ValueError:
            return events  # cut while being written (UnicodeDecodeError is a ValueError)
        events.append(_parse_line(path, len(lines), line))  # whole, only its newline is missing
    return events


def parse_event(line: str | bytes, where: str) -> Any:
    """One validated event from one line of a log; :class:`TrajectoryError` naming ``where``
    otherwise (with ``version`` set when a newer loopagent wrote the line).

    The schema version is checked first: a newer event may validate here and still mean
    something this version cannot tell.
    """
    try:
        record = json.loads(line)
    except ValueError:  # UnicodeDecodeError too
        raise TrajectoryError(f"{where}: not a loopagent trajectory event (not JSON)", why="not JSON") from None
    version = record.get("v") if isinstance(record, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise TrajectoryError(
            f"{where}: written with trajectory schema version {version}; this loopagent reads "
            f"versions up to {SCHEMA_VERSION}: upgrade loopagent to read it", version=version
        )
    try:
        return _EVENT.validate_python(record)
    except ValidationError as e:
        why = _first_error(e)
        raise TrajectoryError(f"{where}: not a loopagent trajectory event ({why})", why=why) from None


def _parse_line(path: str | os.PathLike[str], number: int, line: str) -> Any:
    try:
        return parse_event(line, f"{path}:{number}")
    except TrajectoryError as e:
        if number == 1 and e.version is None:  # a first line that is no event: another file altogether
            raise TrajectoryError(f"{path}: not a trajectory: line 1 is not a loopagent event ({e.why})") from None
        raise


def _first_error(error: ValueError) -> str:
    """The first problem pydantic found, as "field: message" (its own first line only counts them)."""
    if isinstance(error, ValidationError) and error.errors():
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
        return f"{where}: {first['msg']}{more}" if where else f"{first['msg']}{more}"
    return str(error).splitlines()[0]
