"""Token counting that works offline.

tiktoken normally downloads its encodings on first use; litellm's wheel ships
the same files, so when litellm is installed we point ``TIKTOKEN_CACHE_DIR`` at
them. Without either, counts fall back to an estimate (~4 characters per token)
and usage records say so (``tokens_estimated``).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable
from typing import Any

_DEFAULT_ENCODING = "o200k_base"


@functools.lru_cache(maxsize=8)
def _encoding(name: str) -> Any | None:
    spec = importlib.util.find_spec("litellm")
    if spec is not None and spec.origin and "TIKTOKEN_CACHE_DIR" not in os.environ:
        bundled = os.path.join(os.path.dirname(spec.origin), "litellm_core_utils", "tokenizers")
        if os.path.isdir(bundled):
            os.environ["TIKTOKEN_CACHE_DIR"] = bundled
    try:
        import tiktoken

        return tiktoken.get_encoding(name)
    except Exception:  # not installed, or the encoding cannot be loaded offline
        return None


def token_counter(encoding: str = _DEFAULT_ENCODING) -> tuple[Callable[[str], int], bool]:
    """Return ``(count, exact)``: a function counting tokens of a text, and whether
    it is an exact tokenizer (False: a 4-characters-per-token estimate)."""
    enc = _encoding(encoding)
    if enc is not None:
        return (lambda text: len(enc.encode(text, disallowed_special=()))), True
    return (lambda text: (len(text) + 3) // 4), False


def count_tokens(text: str, encoding: str = _DEFAULT_ENCODING) -> int:
    """Tokens in ``text`` (exact with tiktoken, else estimated).

    Example::

        >>> count_tokens("hello world")
        2
    """
    return token_counter(encoding)[0](text)
