"""The environment protocol: where an RLM keeps its context and runs model code.

An environment loads a context once, executes code cells in a persistent
namespace, exposes host functions (``llm_query``, ``FINAL`` ...) to that code,
and lets the controller read variables back. :class:`SandboxREPL` is the default
implementation; anything with the same methods can stand in (for example a
remote sandbox).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from loopagent.errors import LoopagentError

#: What ``load_context`` accepts. A ``str`` is always text, never a path: pass
#: ``pathlib.Path`` to load a file or a directory.
ContextLike = str | bytes | list | dict | os.PathLike | None

HostFunction = Callable[..., Any]


class ExecResult(BaseModel):
    """The outcome of executing one code cell."""

    stdout: str = Field(description="Printed output plus the value of a trailing expression, capped.")
    error: str | None = Field(default=None, description="Model-readable error with a traceback of the cell's own lines.")
    error_type: str | None = Field(default=None, description="Exception name, e.g. 'NameError', 'TimeoutError'.")
    duration_s: float = Field(description="Wall time of the exec as seen by the parent, host calls included.")
    host_time_s: float = Field(default=0.0, description="Part of duration_s spent serving host functions.")
    host_calls: int = Field(default=0, description="Host function calls made by the cell.")
    truncated: bool = Field(default=False, description="True when stdout was cut at the output limit.")
    restarted: bool = Field(default=False, description="True when the worker was replaced (timeout or crash): variables are gone.")

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


class UnsupportedContextError(SandboxError, TypeError):
    """The context is of a type the sandbox cannot hold."""


class VariableError(SandboxError, LookupError):
    """A variable is missing from the sandbox or cannot be converted."""


@runtime_checkable
class Environment(Protocol):
    """A persistent REPL for model-written code.

    Example::

        with SandboxREPL() as env:
            env.load_context("a long document ...")
            env.register("shout", lambda s: s.upper())
            result = env.execute("print(shout(context[:6]))")
            assert result.stdout == "A LONG\\n"
    """

    def load_context(self, context: ContextLike) -> None:
        """Make ``context`` available to code as the variable ``context`` (sent once)."""

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
