"""Lets the escape files of the later review rounds import ``_escape_helpers`` (this folder on
``sys.path``: under ``--import-mode=importlib`` test files cannot import each other)."""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.append(_HERE)
