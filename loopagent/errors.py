"""Exceptions raised to users of loopagent.

Problems in model-written code never raise: they come back to the model inside
the run. These exceptions are for invalid configuration (raised before any work
starts) and for programming errors.
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
