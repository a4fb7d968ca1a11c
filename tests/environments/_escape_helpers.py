"""The helpers and fixtures of ``test_escapes.py``, loaded once for the later review rounds' files.

``test_escapes.py`` is a test file, which the others cannot import under pytest's
``--import-mode=importlib``; it is loaded here by path, under one name, and each round file takes
what it needs: ``from _escape_helpers import corpus``.
"""

import importlib.util
import sys
from pathlib import Path

_NAME = "_escape_corpus_helpers"


def _load():
    if _NAME in sys.modules:
        return sys.modules[_NAME]
    spec = importlib.util.spec_from_file_location(_NAME, Path(__file__).with_name("test_escapes.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = module
    spec.loader.exec_module(module)
    return module


corpus = _load()
