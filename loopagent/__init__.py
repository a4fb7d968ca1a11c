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
from loopagent.models import model
from loopagent.rlm import RLM, Budget, Result, Session
from loopagent.tools import ToolConfigError

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
