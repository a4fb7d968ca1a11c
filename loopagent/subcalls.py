"""Named child models and per-call settings of sub-calls made from REPL code.

An RLM may carry named models besides its default child (``RLM(models={"fast": ...,
"deep": ...})``); REPL code picks one per call and may set the reply's length and the
sampling temperature::

    llm_query(prompt, model="deep", loops=8, max_tokens=512, temperature=0.0)
    llm_batch(prompts, model="fast", max_tokens=64)
    rlm_query(prompt, context=part, model="deep")     # the child RLM's root is "deep"

Everything here is checked before a call is made; a bad name or value is a
:class:`~loopagent.errors.SubCallError` the model reads in its cell.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from loopagent.backends.base import Backend
from loopagent.errors import ConfigError, InvalidSettingError, UnknownModelError
from loopagent.models import model as build_model
from loopagent.validation import check_int, check_temperature

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,63}")


class CallSettings(BaseModel):
    """Per-call settings of a sub-call; None leaves the backend's (or the RLM's) default.

    Example::

        CallSettings.parse(max_tokens=256, temperature=0.0, fn="llm_query")
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_tokens: int | None = Field(default=None, description="Most tokens of the reply.")
    temperature: float | None = Field(default=None, description="Sampling temperature; 0 is greedy.")

    @classmethod
    def parse(cls, *, max_tokens: Any = None, temperature: Any = None, fn: str = "llm_query") -> CallSettings:
        """Settings from REPL arguments; :class:`InvalidSettingError` naming the bad one."""
        def refuse(message: str) -> Exception:
            return InvalidSettingError(f"{fn}(): {message}")

        if max_tokens is not None:
            max_tokens = check_int(max_tokens, "max_tokens", minimum=1, error=refuse)
        if temperature is not None:
            temperature = check_temperature(temperature, error=refuse)
        return cls(max_tokens=max_tokens, temperature=temperature)

    def logged(self) -> dict[str, Any]:
        """The settings that were given (for the trajectory)."""
        return self.model_dump(exclude_none=True)


def build_models(models: Mapping[str, Backend | str] | None) -> dict[str, Backend]:
    """Named child models from ``RLM(models=...)``: backends or spec strings, built like ``child``.

    Raises :class:`ConfigError` for a name that REPL code could not write as a plain string
    literal, or a value that is neither a backend nor a spec.
    """
    if models is None:
        return {}
    if not isinstance(models, Mapping):
        raise ConfigError(f"models must be a dict of name -> backend or spec string, got {type(models).__name__}")
    built: dict[str, Backend] = {}
    for name, spec in models.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(
                f"model name {name!r} must be 1-64 characters of letters, digits and _ . : / - "
                "(REPL code passes it as model='name')"
            )
        if not isinstance(spec, (Backend, str)):
            raise ConfigError(f"models[{name!r}] must be a backend or a spec string, got {type(spec).__name__}")
        built[name] = (build_model(spec) if isinstance(spec, str) else spec).for_role("child")
    return built


def pick_model(models: Mapping[str, Backend], child: Backend, name: Any, fn: str) -> tuple[str | None, Backend]:
    """``(name, backend)`` for a call's ``model=`` (None: the default child); an
    :class:`UnknownModelError` that lists the names otherwise."""
    if name is None:
        return None, child
    if isinstance(name, str) and name in models:
        return name, models[name]
    names = ", ".join(repr(n) for n in models) or "none (RLM(models={...}) names them)"
    what = f"no model named {name!r}" if isinstance(name, str) else f"model must be a name (str), got {name!r}"
    raise UnknownModelError(f"{fn}(): {what}; the named models are: {names}. Leave model unset for the default "
                            f"child ({child.name}).")


__all__ = ["CallSettings", "build_models", "pick_model"]
