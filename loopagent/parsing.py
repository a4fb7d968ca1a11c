"""Reading model replies: code blocks to run and final answers given as text.

A final answer written as text (outside code blocks) is a line that starts with
``FINAL(`` or ``FINAL_VAR(``, closed by a ``)`` that ends a line. It counts only when
its argument is one of:

1. a Python literal (:func:`ast.literal_eval`): a string literal gives its value
   (``FINAL("forty two")``, ``FINAL('it\\'s')``, triple-quoted strings over several
   lines); any other literal gives its text as written (``FINAL(42)``, ``FINAL([1, 2])``);
2. a plain quoted string on one line without its own quote inside, taken verbatim
   (``FINAL("C:\\dir")``, whose escape is not valid Python);
3. a bare short answer: one line of at most :data:`MAX_BARE_CHARS` characters and no
   code syntax, that is none of ``( ) [ ] { } ' " ` = ; \\`` (``FINAL(my best guess)``).

``FINAL_VAR`` takes a variable name, bare or quoted. Anything else
(``FINAL(len(x) + 1)``, ``FINAL(s f', ct +)l``) is *unreadable*: the controller tells
the model how to write it rather than taking the text as an answer. Where several
``)`` end a line, the nearest one that gives a valid argument wins.
"""

from __future__ import annotations

import ast
import re
import warnings

# ```repl (the RLM convention), ```python / ```py, or a bare fence.
_CODE = re.compile(r"```(?:repl|python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL)
_FINAL_START = re.compile(r"^[ \t]*FINAL\(", re.MULTILINE)
_FINAL_VAR = re.compile(r"^\s*FINAL_VAR\(\s*['\"]?([A-Za-z_][A-Za-z0-9_]*)['\"]?\s*\)\s*$", re.MULTILINE)
_FINAL_VAR_ANY = re.compile(r"^[ \t]*(FINAL_VAR\(.*)$", re.MULTILINE)
_CLOSE = re.compile(r"\)[ \t]*$", re.MULTILINE)

#: Longest bare (unquoted) answer accepted from ``FINAL(...)`` written as text.
MAX_BARE_CHARS = 200
_CODE_SYNTAX = frozenset("()[]{}'\"`=;\\")
# Candidate closing parentheses tried per FINAL: bounds the work on a long reply.
_MAX_CANDIDATES = 50


def find_code_blocks(text: str) -> list[str]:
    """Code of every fenced block, in order (empty blocks skipped).

    Example::

        >>> find_code_blocks("look:\\n```repl\\nprint(1)\\n```")
        ['print(1)\\n']
    """
    return [m.group(1) for m in _CODE.finditer(text) if m.group(1).strip()]


def strip_code_blocks(text: str) -> str:
    return _CODE.sub("", text).strip()


def final_argument(arg: str) -> str | None:
    """The answer ``FINAL(arg)`` written as text gives, or None if ``arg`` is not a valid
    answer (see the module docs for the rule)."""
    arg = arg.strip()
    if not arg:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escapes ("C:\dir") warn; rule 2 takes them
            value = ast.literal_eval(arg)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    else:
        return value if isinstance(value, str) else arg
    one_line = "\n" not in arg
    if one_line and len(arg) >= 2 and arg[0] == arg[-1] and arg[0] in "'\"" and arg[0] not in arg[1:-1]:
        return arg[1:-1]
    if one_line and len(arg) <= MAX_BARE_CHARS and not _CODE_SYNTAX.intersection(arg):
        return arg
    return None


def find_final_in_text(text: str) -> tuple[str, str] | None:
    """``FINAL(answer)`` or ``FINAL_VAR(name)`` written as text outside code blocks.

    Returns ``("FINAL", answer)``, ``("FINAL_VAR", name)``, ``("unreadable", written)``
    for a FINAL whose argument breaks the rule (``written``: its first line as written),
    or None when the text has no FINAL line.

    Example::

        >>> find_final_in_text('Found it.\\nFINAL("Paris")')
        ('FINAL', 'Paris')
        >>> find_final_in_text("FINAL(len(x) + 1)")
        ('unreadable', 'FINAL(len(x) + 1)')
    """
    prose = _CODE.sub("", text)
    var = _FINAL_VAR.search(prose)
    if var:
        return "FINAL_VAR", var.group(1)
    start = _FINAL_START.search(prose)
    if start:
        for i, close in enumerate(_CLOSE.finditer(prose, start.end())):
            if i == _MAX_CANDIDATES:
                break
            answer = final_argument(prose[start.end():close.start()])
            if answer is not None:
                return "FINAL", answer
        line_end = prose.find("\n", start.end())
        return "unreadable", prose[start.start():line_end if line_end >= 0 else len(prose)].strip()
    loose = _FINAL_VAR_ANY.search(prose)
    if loose:
        return "unreadable", loose.group(1).strip()
    return None
