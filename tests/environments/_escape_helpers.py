"""The helpers and fixtures of ``test_escapes.py``, loaded once for the later review rounds' files.

``test_escapes.py`` is a test file, which the others cannot import under pytest's
``--import-mode=importlib``; it is loaded here by path, under one name, and each round file imports
what it needs from here: ``from _escape_helpers import attack, check_refused, ...``; the folder's
``conftest.py`` gives them the fixtures (``repl``, ``fresh``, ``secret_env``).
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

attack = corpus.attack
check_refused = corpus.check_refused
assert_healthy = corpus.assert_healthy
assert_nothing_leaked = corpus.assert_nothing_leaked
WIN = corpus.WIN
ANY_ERROR = corpus.ANY_ERROR
LEAK_ONLY = corpus.LEAK_ONLY
POLICY = corpus.POLICY
SECRET_NAME = corpus.SECRET_NAME
SECRET_VALUE = corpus.SECRET_VALUE
# fixtures (conftest.py makes them the folder's)
secret_env = corpus.secret_env
fresh = corpus.fresh
repl = corpus.repl

#: The tail of an attack holding ``m``, an object whose ``_create_fn`` is dataclasses' own (it
#: exec's generated source under dataclasses' real globals): reaching ``os.environ`` is a win.
CREATE_FN_ENV = ("f = m._create_fn\ng = f('g', [], ['return __import__(\"os\").environ'])\nenv = g()\n"
                 "print(env)\nif 'PATH' in env:\n    ")
