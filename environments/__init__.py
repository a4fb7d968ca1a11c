"""REPL environments: where model-written code runs, confined.

``SandboxREPL`` is the default: a separate worker process per REPL running
RestrictedPython code as an unprivileged user with OS limits and no network.
"""

from .base import (
    RESERVED_NAMES,
    ContextInfo,
    ContextNotFoundError,
    ContextTooLargeError,
    Environment,
    ExecResult,
    SandboxClosedError,
    SandboxError,
    SandboxStartError,
    UnsupportedContextError,
    VariableError,
    describe_context,
)
from .sandbox import SandboxLimits, SandboxREPL

__all__ = [
    "RESERVED_NAMES",
    "ContextInfo",
    "ContextNotFoundError",
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
    "describe_context",
]
