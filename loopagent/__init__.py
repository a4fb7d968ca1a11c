"""loopagent: Recursive Language Models over looped transformers.

The long input lives in a confined Python REPL (:mod:`loopagent.environments`);
a root model writes code over it and calls child models on pieces, and every
call gets its own loop budget.

Example::

    from loopagent import RLM, model

    rlm = RLM(root=model("litellm:openai/gpt-4o-mini"), max_depth=2, log_dir="runs/")
    result = rlm.run("Which city is mentioned most often?", context=long_text)
    print(result.answer, result.reason, result.usage.total)
"""

__version__ = "0.1.0"

import importlib
from typing import TYPE_CHECKING, Any

from loopagent.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigError,
    InvalidLoopsError,
    LoopagentError,
    MissingAPIKeyError,
    ModelSpecError,
    PromptTooLongError,
    SubCallError,
)

if TYPE_CHECKING:
    from loopagent.models import model
    from loopagent.rlm import RLM, Budget, Result, Session
    from loopagent.tools import ToolConfigError

# The controller (pydantic, litellm, the sandbox) loads on first use: the model packages
# (loopagent.backends.looped, .kernels) then import on a machine with only torch, such as a
# GPU box running bench/kernels.py.
_LAZY = {"model": "loopagent.models", "RLM": "loopagent.rlm", "Budget": "loopagent.rlm", "Result": "loopagent.rlm",
         "Session": "loopagent.rlm", "ToolConfigError": "loopagent.tools"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'loopagent' has no attribute {name!r}")
    value = globals()[name] = getattr(importlib.import_module(module), name)
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "RLM",
    "BackendError",
    "BackendUnavailableError",
    "Budget",
    "ConfigError",
    "InvalidLoopsError",
    "LoopagentError",
    "MissingAPIKeyError",
    "ModelSpecError",
    "PromptTooLongError",
    "Result",
    "Session",
    "SubCallError",
    "ToolConfigError",
    "__version__",
    "model",
]
