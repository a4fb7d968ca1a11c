"""Python syntax highlighting at build time, as (class, text) tokens.

The page builds spans from these with ``textContent``: model-written code never goes
through ``innerHTML``. Pygments ships with rich, so this needs nothing new.

Example::

    tokens("x = 1")   # [['n', 'x'], ['', ' '], ['o', '='], ['', ' '], ['m', '1']]
"""

from __future__ import annotations

from typing import Any

from pygments.lexers import PythonLexer
from pygments.token import Comment, Keyword, Name, Number, Operator, String

# Coarse classes are enough to read code; the CSS styles exactly these.
_CLASSES: list[tuple[Any, str]] = [
    (Comment, "c"), (String, "s"), (Number, "m"), (Keyword, "k"), (Operator.Word, "k"), (Operator, "o"),
    (Name.Builtin, "nb"), (Name.Function, "nf"), (Name.Class, "nf"), (Name.Decorator, "nd"), (Name, "n"),
]
_LEXER = PythonLexer(stripnl=False, ensurenl=False)


def _cls(kind: Any) -> str:
    for parent, name in _CLASSES:
        if kind in parent:
            return name
    return ""


def tokens(code: str) -> list[list[str]]:
    """``code`` as ``[class, text]`` pairs whose texts join back to ``code`` exactly."""
    out: list[list[str]] = []
    for kind, text in _LEXER.get_tokens(code):
        name = _cls(kind)
        if out and out[-1][0] == name:
            out[-1][1] += text
        else:
            out.append([name, text])
    if "".join(t for _, t in out) != code:  # the lexer normalised something: show the text as written
        return [["", code]]
    return out
