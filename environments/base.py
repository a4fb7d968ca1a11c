"""The environment protocol: where an RLM keeps its context and runs model code.

An environment loads a context once, executes code cells in a persistent
namespace, exposes host functions (``llm_query``, ``FINAL`` ...) to that code,
and lets the controller read variables back. :class:`SandboxREPL` is the default
implementation; anything with the same methods can stand in (for example a
remote sandbox).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from loopagent.errors import LoopagentError

#: What ``load_context`` accepts. A ``str`` is always text, never a path: pass
#: ``pathlib.Path`` to load a file or a directory.
ContextLike = str | bytes | list | dict | os.PathLike | None

HostFunction = Callable[..., Any]

#: Names an environment keeps for itself: no host function may take them.
RESERVED_NAMES: frozenset[str] = frozenset({"context"})

#: Characters of a text context shown to the root model in its system prompt.
PREVIEW_CHARS = 200


class ContextInfo(BaseModel):
    """What a loaded context is: its type and size, never its content.

    ``load_context`` returns it; the controller builds the root's system prompt
    from it and logs :meth:`summary` in the trajectory, so both say the same.

    Example::

        describe_context(["a", "bc"]).summary()   # {'type': 'list', 'items': 2, 'chars': 3}
    """

    model_config = ConfigDict(frozen=True)

    type: Literal["none", "str", "bytes", "list", "dict", "file", "directory"]
    chars: int | None = Field(default=None, description="str: its length; list: characters of its str items.")
    bytes: int | None = Field(default=None, description="bytes, file and directory contexts: size in bytes.")
    items: int | None = Field(default=None, description="list: number of items.")
    keys: int | None = Field(default=None, description="dict: number of keys.")
    files: int | None = Field(default=None, description="directory: number of regular files code can read.")
    path: str | None = Field(default=None, description="file and directory contexts: the path as given.")
    preview: str | None = Field(
        default=None, exclude=True, description="The first characters of a text context (prompt only, never logged)."
    )

    def summary(self) -> dict[str, Any]:
        """The logged form: the fields that apply, no content."""
        return self.model_dump(exclude_none=True)


def describe_context(context: ContextLike, *, files: Sequence[tuple[str, int]] | None = None) -> ContextInfo:
    """Describe ``context`` as an environment would load it.

    ``files`` (relative path, size) spares a second walk of a directory whose
    files were already listed.
    """
    if context is None:
        return ContextInfo(type="none")
    if isinstance(context, str):
        return ContextInfo(type="str", chars=len(context), preview=context[:PREVIEW_CHARS])
    if isinstance(context, (bytes, bytearray, memoryview)):
        return ContextInfo(type="bytes", bytes=len(context))
    if isinstance(context, (list, tuple)):
        first = context[0] if context and isinstance(context[0], str) else None
        return ContextInfo(type="list", items=len(context), chars=sum(len(x) for x in context if isinstance(x, str)),
                           preview=first[:PREVIEW_CHARS] if first is not None else None)
    if isinstance(context, dict):
        return ContextInfo(type="dict", keys=len(context))
    if isinstance(context, os.PathLike):
        path = Path(context)
        if path.is_dir():
            listed = list(files) if files is not None else list_files(path)
            return ContextInfo(type="directory", path=str(path), files=len(listed), bytes=sum(s for _, s in listed))
        return ContextInfo(type="file", path=str(path), bytes=path.stat().st_size if path.exists() else 0)
    raise UnsupportedContextError(f"unsupported context type {type(context).__name__}")


def list_files(root: Path, *, limit: int | None = None) -> list[tuple[str, int]]:
    """Regular files under ``root`` as (relative POSIX path, size), sorted; symlinks and
    special files are skipped since they could lead outside the directory."""
    root = root.resolve()
    files: list[tuple[str, int]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath) / name
            try:
                st = full.lstat()
            except FileNotFoundError:  # removed while the directory was walked
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            files.append((full.relative_to(root).as_posix(), st.st_size))
            if limit is not None and len(files) > limit:
                raise ContextTooLargeError(f"context directory {str(root)!r} has more than {limit:,} files")
    return files


class ExecResult(BaseModel):
    """The outcome of executing one code cell."""

    stdout: str = Field(description="Printed output plus the value of a trailing expression, capped.")
    error: str | None = Field(
        default=None, description="Model-readable error with a traceback of the cell's own lines."
    )
    error_type: str | None = Field(default=None, description="Exception name, e.g. 'NameError', 'TimeoutError'.")
    duration_s: float = Field(description="Wall time of the exec as seen by the parent, host calls included.")
    host_time_s: float = Field(default=0.0, description="Part of duration_s spent serving host functions.")
    host_calls: int = Field(default=0, description="Host function calls made by the cell.")
    truncated: bool = Field(default=False, description="True when stdout was cut at the output limit.")
    restarted: bool = Field(
        default=False, description="True when the worker was replaced (timeout or crash): variables are gone."
    )

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def text(self) -> str:
        """What to show the model: output, then the error if any."""
        if self.error is None:
            return self.stdout
        return f"{self.stdout}{'' if not self.stdout or self.stdout.endswith(chr(10)) else chr(10)}{self.error}"


class SandboxError(LoopagentError, RuntimeError):
    """Base class of environment errors raised to the host program."""


class SandboxStartError(SandboxError):
    """The worker process could not be started or did not become ready."""


class SandboxClosedError(SandboxError):
    """The environment was used after ``close()``."""


class ContextTooLargeError(SandboxError, ValueError):
    """The context does not fit the sandbox's memory limit."""


class ContextNotFoundError(SandboxError, FileNotFoundError):
    """A context path that does not exist."""


class UnsupportedContextError(SandboxError, TypeError):
    """The context is of a type the sandbox cannot hold."""


class VariableError(SandboxError, LookupError):
    """A variable is missing from the sandbox (``missing`` is True) or cannot be converted."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


@runtime_checkable
class Environment(Protocol):
    """A persistent REPL for model-written code.

    An environment may also offer ``set_variable(name, value)`` (JSON-like values, as
    :class:`SandboxREPL` does); the controller uses it where present to keep a compacted
    run's full history readable in the REPL, and does without it elsewhere.

    Example::

        with SandboxREPL() as env:
            env.load_context("a long document ...")
            env.register("shout", lambda s: s.upper())
            result = env.execute("print(shout(context[:6]))")
            assert result.stdout == "A LONG\\n"
    """

    def load_context(self, context: ContextLike) -> ContextInfo:
        """Make ``context`` available to code as the variable ``context`` (sent once);
        returns what was loaded (see :func:`describe_context`)."""

    def register(self, name: str, fn: HostFunction) -> None:
        """Expose a host function to code by name; sync or async functions."""

    def execute(self, code: str) -> ExecResult:
        """Run one cell; errors in the code come back in the result, never raised."""

    async def aexecute(self, code: str) -> ExecResult:
        """``execute`` for asyncio callers; async host functions run on the caller's loop."""

    def get_variable(self, name: str, *, as_text: bool = False) -> Any:
        """Read a variable: JSON-like values as they are, or ``str(value)`` with ``as_text``."""

    def reset(self) -> None:
        """Forget all variables; keep the context and the host functions."""

    def close(self) -> None:
        """Release the environment's resources."""

    def __enter__(self) -> Environment: ...

    def __exit__(self, *exc: object) -> None: ...
