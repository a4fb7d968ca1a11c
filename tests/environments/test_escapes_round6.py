"""Escape corpus, sixth review: C-level callbacks, re-exported objects, the parent's replies.

Same conventions as ``test_escapes.py`` (its helpers and fixtures are loaded from
that file): an attack prints ``ESCAPED`` (built as ``"ESC" + "APED"``) only after
the dangerous step worked, runs in a fresh sandbox, and afterwards the sandbox
must still answer ``1 + 1``.

Every case in ``ROUND6`` succeeded when it was written (they fail until fixed):

- ``numbers.ABCMeta`` is the real ``abc.ABCMeta`` (denied only as ``abc.ABCMeta`` and
  ``typing.ABCMeta``): it builds classes without the class statement's checks, so a
  subclass of a typing alias forwards private reads to any module
  (``dataclasses._create_fn`` exec's source under dataclasses' real globals).
- ``contextlib.contextmanager(functools)`` wraps a *module* with the real
  ``functools.wraps``: the helper function's ``__dict__`` gets the module's dict, so
  every denied or replaced name of that module (``update_wrapper``, ``singledispatch``,
  ``typing.get_type_hints`` ...) is read off the helper, where the per-module checks of
  ``guarded_getattr`` do not apply.
- ``_check_match_class`` reads ``cls.__match_args__`` once; the ``match`` reads it again
  natively. A descriptor (an own class with ``__get__``) answers ``()`` to the check and
  ``('__setattr__', '__getattribute__')`` to the match: the bound
  ``object.__setattr__`` turns an own instance into a ``functools.cached_property``
  whose ``__get__`` hands out any module's ``__builtins__``.
- ``numbers.ABCMeta.register`` (unbound) registers any class with any ABC, which the
  guards refuse as ``ABC.register``.
- ``functools.namedtuple`` / ``statistics.namedtuple`` are the real
  ``collections.namedtuple``: ``module=`` is not checked there.
- ``dataclasses.FunctionType`` is the real function type that ``type(f)`` stands in for.

``ROUND6_FOUND_IN_FIX`` holds variants found while fixing these (those with a ``# was open``
succeeded before the fix too): the same re-exports through ``from ... import``,
``typing.GenericAlias`` (denied as ``contextlib.GenericAlias`` only) forwarding reads to a
module, and a class pattern whose class forwards attribute reads (``type(list[int])``):
the pattern reads the keyword attributes natively, past the guards.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from _escape_helpers import (
    ANY_ERROR,
    LEAK_ONLY,
    SECRET_NAME,
    WIN,
    assert_healthy,
    assert_nothing_leaked,
    attack,
    check_refused,
)

from loopagent.environments import SandboxREPL

# The `match` below reads __match_args__ twice: once in _check_match_class (answer: nothing)
# and once natively (answer: two dunders that are never readable on a foreign class).
_MATCH_ARGS_SWAP = (
    "reads = []\n"
    "class D:\n"
    "    def __get__(self, obj, owner=None):\n"
    "        reads.append(1)\n"
    "        return () if len(reads) == 1 else ('__setattr__', '__getattribute__')\n"
    "class C:\n"
    "    __match_args__ = D()\n"
)

ROUND6 = [
    attack("review6", "numbers_abcmeta_builds_a_typing_alias_subclass",
           "import numbers, typing, dataclasses\n"
           "X = numbers.ABCMeta('X', (type(typing.List[int]),), {'__module__': 'repl'}, **{'_root': True})\n"
           "mk = X(dataclasses, (), name='n')._create_fn\n"
           "env = mk('f', [], ['import os', 'return os.environ'])()\n"
           "if len(env) >= 0:\n    " + WIN, errors=ANY_ERROR),
    attack("review6", "numbers_abcmeta_defines_any_dunder",
           "import numbers\n"
           "X = numbers.ABCMeta('X', (), {'__module__': 'repl', '__getattribute__': lambda self, n: n})\n"
           "if X().anything == 'anything':\n    " + WIN, errors=ANY_ERROR),
    attack("review6", "numbers_abcmeta_unbound_register",
           "import numbers, collections.abc\nclass C:\n    pass\n"
           "numbers.ABCMeta.register(collections.abc.Mapping, C)\n"
           "if isinstance(C(), collections.abc.Mapping):\n    " + WIN, errors=ANY_ERROR),
    attack("review6", "contextmanager_copies_a_modules_dict_real_update_wrapper",
           "import contextlib, functools, calendar\ndef probe():\n    pass\n"
           "helper = contextlib.contextmanager(functools)\n"
           "helper.update_wrapper(probe, calendar.weekday, assigned=(), updated=('__globals__',))\n"
           "if 'weekday' in dir():\n    " + WIN, errors=ANY_ERROR),
    *[attack("review6", f"module_dict_copied_by_{name}",
             "import contextlib, functools, typing, calendar\ndef probe():\n    pass\n"
             "@contextlib.contextmanager\ndef cm():\n    yield\n"
             f"helper = {expr}\n"
             "helper.update_wrapper(probe, calendar.weekday, assigned=(), updated=('__globals__',))\n"
             "if 'weekday' in dir():\n    " + WIN, errors=ANY_ERROR)
      for name, expr in (("asynccontextmanager", "contextlib.asynccontextmanager(functools)"),
                         ("context_decorator", "cm()(functools)"),
                         ("no_type_check_decorator", "typing.no_type_check_decorator(functools)"))],
    attack("review6", "contextmanager_copies_a_modules_dict_singledispatch",
           "import contextlib, functools\nsd = contextlib.contextmanager(functools).singledispatch\n" + WIN,
           errors=ANY_ERROR),
    attack("review6", "contextmanager_copies_a_modules_dict_get_type_hints",
           # get_type_hints eval()s the annotation natively (no rewrite) in the placeholder module
           "import contextlib, typing\nclass A:\n"
           "    x: '[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == \"_wrap_close\"]"
           "[0].__init__.__globals__[\"environ\"]'\n"
           "env = contextlib.contextmanager(typing).get_type_hints(A)['x']\nif len(env) >= 0:\n    " + WIN,
           errors=ANY_ERROR),
    attack("review6", "match_args_descriptor_answers_the_check_and_the_match_differently",
           _MATCH_ARGS_SWAP +
           "import functools, calendar\nc = C()\n"
           "match c:\n    case C(s, ga):\n        pass\n"
           "c.attrname = '__builtins__'\nc.func = len\n"
           "s('__class__', functools.cached_property)\n"
           "b = ga('__get__')(calendar)\n"
           "if b['open'] is not open:\n    " + WIN, errors=ANY_ERROR),
    attack("review6", "match_args_descriptor_reads_a_refused_dunder",
           _MATCH_ARGS_SWAP +
           "match C():\n    case C(s, ga):\n        " + WIN, errors=ANY_ERROR),
    attack("review6", "functools_namedtuple_takes_any_module",
           "import functools\nT = functools.namedtuple('T', 'a', module='json')\nif T.__module__ == 'json':\n    "
           + WIN, errors=ANY_ERROR),
    attack("review6", "statistics_namedtuple_takes_any_module",
           "import statistics\nT = statistics.namedtuple('T', 'a', module='json')\nif T.__module__ == 'json':\n    "
           + WIN, errors=ANY_ERROR),
    attack("review6", "dataclasses_function_type_is_the_real_one",
           "import dataclasses\nF = dataclasses.FunctionType\nif F is not type(lambda: 0):\n    " + WIN,
           errors=LEAK_ONLY),
]


ROUND6_FOUND_IN_FIX = [
    # was open
    attack("review6", "from_numbers_import_abcmeta",
           "from numbers import ABCMeta\n"
           "X = ABCMeta('X', (), {'__module__': 'repl', '__getattribute__': lambda self, n: n})\n"
           "if X().anything == 'anything':\n    " + WIN, errors=ANY_ERROR),
    # was open
    attack("review6", "from_functools_import_namedtuple_takes_any_module",
           "from functools import namedtuple\nT = namedtuple('T', 'a', module='json')\nif T.__module__ == 'json':\n    "
           + WIN, errors=ANY_ERROR),
    # was open
    attack("review6", "from_dataclasses_import_function_type",
           "from dataclasses import FunctionType\nif FunctionType is not type(lambda: 0):\n    " + WIN,
           errors=LEAK_ONLY),
    # was open
    attack("review6", "typing_generic_alias_forwards_reads_to_a_module",
           "import typing, functools\nsd = typing.GenericAlias(functools, ()).singledispatch\n" + WIN,
           errors=ANY_ERROR),
    # was open
    attack("review6", "generic_alias_of_a_module_forwards_to_the_denied_name",
           "import functools\nG = type(list[int])\nsd = G(functools, ()).singledispatch\n" + WIN, errors=ANY_ERROR),
    # was open
    attack("review6", "class_pattern_reads_through_a_generic_alias_natively",
           "import functools\nG = type(list[int])\nmatch G(functools, ()):\n    case G(singledispatch=sd):\n"
           "        " + WIN, errors=ANY_ERROR),
    attack("review6", "match_args_tuple_subclass",
           "class T(tuple):\n    pass\nclass C:\n    __match_args__ = T(('__class__',))\n"
           "match C():\n    case C(k):\n        " + WIN, errors=ANY_ERROR),
    attack("review6", "match_args_str_subclass",
           "class S(str):\n    pass\nclass C:\n    __match_args__ = (S('x'),)\n    x = 1\n"
           "match C():\n    case C(k):\n        " + WIN, errors=ANY_ERROR),
]


@pytest.mark.parametrize("a", ROUND6 + ROUND6_FOUND_IN_FIX)
def test_round6_findings_are_refused(fresh, a):
    check_refused(fresh, a, fresh.execute(a.code))


_IDENTITY_SCRIPT = """
import sys, types, abc, functools, collections, numbers
sys.path.insert(0, sys.argv[1])
import _guards as g
g.preload_modules()
original_update_wrapper = next(iter(g._HARDENED))
ns = types.SimpleNamespace(meta=numbers.ABCMeta, uw=original_update_wrapper, nt=collections.namedtuple,
                           ft=types.FunctionType, sd=functools.singledispatch, reg=abc.ABC.register,
                           reg_unbound=abc.ABCMeta.register, meta2=type)
def refused(f):
    try:
        f()
    except g.SandboxPolicyError:
        return True
    return False
checks = {
    'metaclass': refused(lambda: g.guarded_getattr(ns, 'meta')),
    'type_itself': refused(lambda: g.guarded_getattr(ns, 'meta2')),
    'denied_function': refused(lambda: g.guarded_getattr(ns, 'sd')),
    'bound_register': refused(lambda: g.guarded_getattr(ns, 'reg')),
    'unbound_register': refused(lambda: g.guarded_getattr(ns, 'reg_unbound')),
    'dict_read': refused(lambda: g.guarded_getitem({'k': numbers.ABCMeta}, 'k')),
    'original_update_wrapper': g.guarded_getattr(ns, 'uw') is g._update_wrapper,
    'patched_update_wrapper': g.guarded_getitem([functools.update_wrapper], 0) is g._update_wrapper,
    'namedtuple': g.guarded_getattr(ns, 'nt') is g._namedtuple,
    'function_type': g.guarded_getattr(ns, 'ft') is g._STAND_INS[types.FunctionType],
    'wrap_a_module': refused(lambda: functools.wraps(functools)(lambda: 0)),
    'plain_values': g.guarded_getitem({'k': [1]}, 'k') == [1] and g.guarded_getattr(ns, 'missing', 0) == 0,
}
print(sorted(k for k, ok in checks.items() if not ok))
"""


def test_denial_goes_by_the_object_whatever_holds_it():
    """The guards' identity tables, checked in a fresh interpreter (preload_modules patches
    that interpreter's modules): a denied or replaced object is caught on whatever object
    or container it is read from, not only as the attribute of the module that names it."""
    env_dir = Path(__file__).resolve().parents[2] / "environments"
    done = subprocess.run([sys.executable, "-c", _IDENTITY_SCRIPT, str(env_dir)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def test_contextmanager_bypass_does_not_give_the_next_cell_real_builtins(fresh):
    """The follow-up of contextmanager_copies_a_modules_dict_real_update_wrapper: with the
    real update_wrapper the namespace gets calendar's globals, so the next cell has the
    real builtins (getattr, open) and ``sys``."""
    fresh.execute(
        "import contextlib, functools, calendar\ndef probe():\n    pass\n"
        "contextlib.contextmanager(functools).update_wrapper(probe, calendar.weekday, assigned=(), "
        "updated=('__globals__',))\n"
    )
    res = fresh.execute("os = getattr(getattr(sys, 'modules'), 'get')('os')\nif getattr(os, 'environ') is not None:\n"
                        "    " + WIN)
    assert_nothing_leaked(res, forbid=(SECRET_NAME,))
    assert res.error is not None
    assert_healthy(fresh)


# -- the parent --------------------------------------------------------------------------


@pytest.mark.slow
def test_final_var_of_a_variable_whose_str_spins_does_not_raise_from_execute(secret_env):
    """FINAL_VAR reads a variable from inside a host call. When the worker dies (CPU limit)
    or times out while the model's __str__ runs, get_variable stops the worker and raises
    SandboxError inside the host function; _serve_call then sends the error reply on the
    closed channel (self._chan is None): execute() raised AttributeError."""
    with SandboxREPL(timeout_s=1) as r:
        r.register("final_var", lambda name: r.get_variable(name, as_text=True))
        start = time.monotonic()
        raised = None
        try:
            res = r.execute(
                "class S:\n    def __str__(self):\n        while True:\n            pass\n"
                "s = S()\nfinal_var('s')"
            )
        except Exception as e:  # noqa: BLE001 - what the test is about
            raised = f"{type(e).__name__}: {e}"
        assert raised is None, f"execute() raised in the parent: {raised}"
        assert res.error is not None
        assert time.monotonic() - start < 60
        follow = r.execute("1 + 1")
        assert follow.stdout == "2\n"


def test_error_type_is_capped_like_the_error_text(repl):
    """The exception class's name is model-chosen (``E.__name__`` is writable) and comes
    back as ExecResult.error_type uncapped (10 MB here), into the trajectory log."""
    res = repl.execute("class E(Exception):\n    pass\nE.__name__ = 'x' * 10**6\nraise E()")
    assert res.error is not None
    assert len(res.error_type or "") <= 2 * repl.limits.max_output_chars
    assert_healthy(repl)


# -- ordinary Python a fix must keep working ---------------------------------------------


def test_ordinary_match_contextmanager_abc_and_namedtuple_still_work(repl):
    res = repl.execute(
        "import contextlib, functools, abc, numbers, collections, dataclasses, enum, statistics\n"
        "class P:\n    __match_args__ = ('x', 'y')\n"
        "    def __init__(self, x, y):\n        self.x, self.y = x, y\n"
        "@dataclasses.dataclass\nclass Q:\n    a: int\n    b: int = 2\n"
        "Pt = collections.namedtuple('Pt', 'u v')\n"
        "class Color(enum.Enum):\n    RED = 1\n"
        "def which(o):\n"
        "    match o:\n"
        "        case P(x, y):\n            return f'P{x}{y}'\n"
        "        case Q(a, b):\n            return f'Q{a}{b}'\n"
        "        case Pt(u, v):\n            return f'Pt{u}{v}'\n"
        "        case Color.RED:\n            return 'red'\n"
        "        case int(n):\n            return f'int{n}'\n"
        "    return '?'\n"
        "@contextlib.contextmanager\ndef tag(name):\n    yield name.upper()\n"
        "with tag('t') as t:\n    pass\n"
        "@functools.lru_cache(maxsize=None)\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
        "def deco(f):\n    @functools.wraps(f)\n    def inner(*a):\n        return f(*a)\n    return inner\n"
        "@deco\ndef named():\n    return 1\n"
        "class Shape(abc.ABC):\n    @abc.abstractmethod\n    def area(self):\n        ...\n"
        "class Sq(Shape):\n    def area(self):\n        return 4\n"
        "print([which(P(1, 2)), which(Q(3)), which(Pt(5, 6)), which(Color.RED), which(7)], t, fib(30), "
        "named.__name__, Sq().area(), isinstance(3, numbers.Number), statistics.mean([1, 2, 3]))"
    )
    assert res.error is None, res.error
    assert res.stdout == "['P12', 'Q32', 'Pt56', 'red', 'int7'] T 832040 named 4 True 2\n"


def test_class_pattern_on_a_forwarding_typing_alias_is_refused(repl):
    """typing's aliases forward public reads to their origin in Python (``__getattr__``), which a
    class pattern would run natively; the refusal names the class that forwards."""
    res = repl.execute("import typing\nG = type(typing.List[int])\nmatch typing.List[int]:\n"
                       "    case G(append=a):\n        pass\n")
    assert res.error_type == "SandboxPolicyError", res.error
    assert "forwards attribute reads" in res.error
    assert_healthy(repl)


# -- the parent: replies ------------------------------------------------------------------


_FINALIZER_CALLS_HOST = (
    "log = []\n"
    "def g():\n"
    "    try:\n        yield 1\n"
    "    finally:\n"
    "        try:\n            log.append(note('from a finalizer'))\n"
    "        except Exception as e:\n            log.append(str(e))\n"
    "context['g'] = g()\nnext(context['g'])\n"
)


def test_host_call_sent_while_the_parent_awaits_another_reply_is_refused(secret_env):
    """Loading a new context frees the old one in the worker; a generator kept only there runs
    its ``finally`` then and calls a host function while the parent waits for load_context's
    reply. That call was taken as the reply (load_context raised, the next cell crashed on the
    reply that came after); it is refused, and the load completes."""
    calls = []
    with SandboxREPL(timeout_s=5) as r:
        r.load_context({"a": 1})
        r.register("note", lambda text: calls.append(text) or "noted")
        assert r.execute(_FINALIZER_CALLS_HOST).error is None
        r.load_context({"b": 2})
        res = r.execute("print(log, context)")
        assert res.error is None, res.error
        assert calls == [], "a host function ran outside a cell"
        assert "only while a cell runs" in res.stdout and "{'b': 2}" in res.stdout, res.stdout
        assert not res.restarted
        assert r.execute("1 + 1").stdout == "2\n"


def test_context_file_read_while_a_variable_is_read_is_served(tmp_path):
    """A ``__str__`` that reads the context directory runs while get_variable waits for the
    value: the worker's file request is answered, not taken as the reply (it was: the worker
    was restarted)."""
    (tmp_path / "a.txt").write_text("alpha")
    with SandboxREPL(timeout_s=5) as r:
        r.load_context(tmp_path)
        assert r.execute("class S:\n    def __str__(self):\n        return context['a.txt']\ns = S()").error is None
        assert r.get_variable("s", as_text=True) == "alpha"
        assert r.restarts == 0
        assert r.execute("1 + 1").stdout == "2\n"


# -- more ordinary Python ------------------------------------------------------------------


def test_ordinary_match_args_inheritance_and_wrapping_still_work(repl):
    res = repl.execute(
        "import dataclasses, functools, typing, contextlib\n"
        "@dataclasses.dataclass\nclass A:\n    x: int\n"
        "class B(A):\n    pass\n"
        "class K:\n    __match_args__ = ()\n"
        "match B(3):\n    case A(v):\n        first = v\n"
        "match K():\n    case K():\n        second = 'k'\n"
        "@functools.wraps(len)\ndef my_len(x):\n    return len(x)\n"
        "@contextlib.contextmanager\ndef cm():\n    yield 5\n"
        "@cm()\ndef decorated():\n    return 6\n"
        "print(first, second, my_len.__name__, decorated(), type(list[int]).__name__, typing.List[int], "
        "isinstance(list[int], type(list[int])))"
    )
    assert res.error is None, res.error
    assert res.stdout == "3 k len 6 GenericAlias typing.List[int] True\n"
