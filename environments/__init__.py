"""REPL environments: where model-written code runs, confined.

``SandboxREPL`` is the default: a separate worker process per REPL running
RestrictedPython code as an unprivileged user with OS limits and no network.
"""

from .base import (
    ContextTooLargeError,
    Environment,
    ExecResult,
    SandboxClosedError,
    SandboxError,
    SandboxStartError,
    UnsupportedContextError,
    VariableError,
)
from .sandbox import SandboxLimits, SandboxREPL

__all__ = [
    "ContextTooLargeError",
    "Environment",
    "ExecResult",
    "SandboxClosedError",
    "SandboxError",
    "SandboxLimits",
    "SandboxREPL",
    "SandboxStartError",
    "UnsupportedContextError",
    "VariableError",
]
