"""Reading model replies: code blocks to run and final answers given as text."""

from __future__ import annotations

import re

# ```repl (the RLM convention), ```python / ```py, or a bare fence.
_CODE = re.compile(r"```(?:repl|python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL)
_FINAL = re.compile(r"^\s*FINAL\((.*)\)\s*$", re.MULTILINE | re.DOTALL)
_FINAL_VAR = re.compile(r"^\s*FINAL_VAR\(\s*['\"]?([A-Za-z_][A-Za-z0-9_]*)['\"]?\s*\)\s*$", re.MULTILINE)


def find_code_blocks(text: str) -> list[str]:
    """Code of every fenced block, in order (empty blocks skipped).

    Example::

        >>> find_code_blocks("look:\\n```repl\\nprint(1)\\n```")
        ['print(1)\\n']
    """
    return [m.group(1) for m in _CODE.finditer(text) if m.group(1).strip()]


def strip_code_blocks(text: str) -> str:
    return _CODE.sub("", text).strip()


def find_final_in_text(text: str) -> tuple[str, str] | None:
    """``FINAL(answer)`` or ``FINAL_VAR(name)`` written as text outside code blocks.

    Returns ``("FINAL", answer)`` or ``("FINAL_VAR", name)``.
    """
    prose = _CODE.sub("", text)
    var = _FINAL_VAR.search(prose)
    if var:
        return "FINAL_VAR", var.group(1)
    final = _FINAL.search(prose)
    if final:
        answer = final.group(1).strip()
        if len(answer) >= 2 and answer[0] == answer[-1] and answer[0] in "'\"":
            answer = answer[1:-1]
        return "FINAL", answer
    return None
