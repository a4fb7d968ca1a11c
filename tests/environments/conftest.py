"""Lets the escape files of the later review rounds import ``_escape_helpers`` (this folder on
``sys.path``: under ``--import-mode=importlib`` test files cannot import each other), and gives
them the fixtures of ``test_escapes.py`` (``repl``, ``fresh``, ``secret_env``; a test file that
defines its own keeps it)."""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.append(_HERE)

from _escape_helpers import fresh, repl, secret_env  # noqa: E402, F401 - fixtures, found by name
