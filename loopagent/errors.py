"""Exceptions raised to users of loopagent.

Problems in model-written code never raise: they come back to the model inside
the run. These exceptions are for invalid configuration (raised before any work
starts) and for programming errors.

Every exception loopagent raises on purpose is a :class:`LoopagentError`, so one
``except LoopagentError`` catches them all; each also keeps the builtin base a
caller may already catch (``ValueError``, ``TypeError``, ``FileNotFoundError``...)::

    LoopagentError
    ├── ConfigError (ValueError)             bad argument, spec, limit or option
    │   ├── ModelSpecError, MissingAPIKeyError, InvalidLoopsError
    │   ├── UnknownTaskError (KeyError)      loopagent.evals.base
    │   └── ResultDirConflict                loopagent.evals (results of another configuration)
    ├── BackendError                         a model call failed
    │   └── BackendUnavailableError (ConnectionError)
    ├── BudgetExceededError                  internal to a run, never reaches users
    ├── SandboxError (RuntimeError)          loopagent.environments
    │   ├── SandboxStartError, SandboxClosedError, VariableError (LookupError)
    │   ├── ContextTooLargeError (ValueError), UnsupportedContextError (TypeError)
    │   └── ContextNotFoundError (FileNotFoundError)
    ├── TrajectoryError (ValueError)         loopagent.trajectory: not a loopagent log
    ├── StreamError (RuntimeError)           loopagent.stream: a RunStream iterated twice
    ├── ConversionError (ValueError)         loopagent.backends.looped.convert
    ├── BenchmarkFileError (ValueError)      loopagent.evals.loaders
    └── ResultsCorrupt (ValueError)          loopagent.evals: a results file with a bad line

Subclasses live next to the code that raises them; this module holds the root and
the ones every layer shares.
"""

from __future__ import annotations


class LoopagentError(Exception):
    """Base class of loopagent's exceptions."""


class ConfigError(LoopagentError, ValueError):
    """Invalid configuration: a bad argument, spec or limit."""


class ModelSpecError(ConfigError):
    """A model spec string that no backend understands."""


class MissingAPIKeyError(ConfigError):
    """The provider of a model needs an API key that is not set."""


class InvalidLoopsError(ConfigError):
    """A loop budget that is not a positive integer or exceeds the model's maximum."""


class BackendError(LoopagentError):
    """A model call failed."""


class BackendUnavailableError(BackendError, ConnectionError):
    """A model server cannot be reached (or answered 5xx / timed out)."""


class BudgetExceededError(LoopagentError):
    """A run's budget (loop-tokens, USD, wall time) is spent; raised inside a run
    to stop further model calls, reported in the result, never to the user."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
