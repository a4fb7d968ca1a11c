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
    │   ├── ToolConfigError                  loopagent.tools: bad tools / child_tools
    │   ├── UnknownTaskError (KeyError)      loopagent.evals.base
    │   └── ResultDirConflict                loopagent.evals (results of another configuration)
    ├── SubCallError (ValueError)            a sub-call REPL code asked for that is not made; the model reads it
    │   ├── UnknownModelError, InvalidSettingError
    │   └── PromptTooLongError               the prompt does not fit the child's context window
    ├── BackendError                         a model call failed
    │   └── BackendUnavailableError (ConnectionError)
    ├── BudgetExceededError                  internal to a run, never reaches users
    ├── SandboxError (RuntimeError)          loopagent.environments
    │   ├── SandboxStartError, SandboxClosedError, VariableError (LookupError)
    │   ├── ContextTooLargeError (ValueError), UnsupportedContextError (TypeError)
    │   └── ContextNotFoundError (FileNotFoundError)
    ├── NotPlainDataError (TypeError)        loopagent.tools: a tool's argument or result (to the model)
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


class SubCallError(LoopagentError, ValueError):
    """A sub-call (``llm_query``, ``llm_batch``, ``rlm_query``) that REPL code asked for and that is
    not made: the model reads the message in its cell and the run goes on."""


class UnknownModelError(SubCallError):
    """``model=`` names no model of the run (``RLM(models={...})``)."""


class InvalidSettingError(SubCallError):
    """A per-call setting (``max_tokens``, ``temperature``) that is not valid."""


class PromptTooLongError(SubCallError):
    """A sub-call prompt longer than the child model's context window (it is not sent).

    ``prompt_tokens`` and ``window`` are the two sizes; ``max_chars`` the chunk size, in
    characters, that would fit.
    """

    def __init__(self, message: str, *, prompt_tokens: int, window: int, max_chars: int) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.window = window
        self.max_chars = max_chars


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
