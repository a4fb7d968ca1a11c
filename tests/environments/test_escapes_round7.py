"""Escape corpus, seventh review: values patterns read natively, the shape cache's code copies,
the identity tables.

Same conventions as ``test_escapes.py`` (its helpers and fixtures are loaded from that file).

- A ``match`` reads natively what its patterns capture: class patterns the keyword attributes
  and those ``__match_args__`` names, mapping patterns ``.get`` of each key, sequence patterns
  each item. None of these reads went through ``_vet``, the identity check every guarded read
  ends with, so an object whose public attribute (or item) is a denied object handed it to
  model code, and a replaced one came back as the real object. The reachable forwarding
  classes were closed in round 6; the captures themselves are vetted now (the case's guard
  binds each through ``_match_bind_`` before anything else runs). The tests plant such an
  object in a namespace of the guards in a fresh interpreter, since the allowed modules hand
  out none through a public attribute of an instance (see the report of round 7).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from _escape_helpers import ANY_ERROR, SECRET_VALUE, WIN, assert_healthy, attack, check_refused

ENV_DIR = Path(__file__).resolve().parents[2] / "environments"




# -- patterns: captured values are vetted ---------------------------------------------------

# Runs cells compiled by the policy in a namespace of the guards, with `planted` (a host object
# whose public attributes and items are denied or replaced objects) put in by the test.
_PLANTED_SCRIPT = """
import sys, types, numbers, functools, collections
sys.path.insert(0, sys.argv[1])
import _guards as g, _policy as p
g.preload_modules()
original_update_wrapper = next(iter(g._HARDENED))
class Holder:
    __match_args__ = ('meta',)
    def __init__(self):
        self.meta, self.sd, self.uw = numbers.ABCMeta, functools.singledispatch, original_update_wrapper
def run(code):
    ns = g.make_namespace()
    ns.update(planted=Holder(), Holder=Holder, items={'meta': numbers.ABCMeta, 'uw': original_update_wrapper},
              seq=[numbers.ABCMeta], real_uw=original_update_wrapper, sys=None)
    cell = p.compile_cell(code)
    try:
        exec(cell.body, ns)
    except g.SandboxPolicyError as e:
        return 'refused', ns.get('got')
    return 'ran', ns.get('got')
cases = {
    'keyword': 'match planted:\\n    case Holder(meta=m):\\n        got = m',
    'positional': 'match planted:\\n    case Holder(m):\\n        got = m',
    'denied_function': 'match planted:\\n    case Holder(sd=s):\\n        got = s',
    'mapping': 'match items:\\n    case {"meta": m}:\\n        got = m',
    'mapping_with_rest': 'match items:\\n    case {"meta": m, **rest}:\\n        got = m',
    'sequence': 'match seq:\\n    case [m]:\\n        got = m',
    'or_pattern': 'match planted:\\n    case Holder(meta=m) | Holder(sd=m):\\n        got = m',
    'guard_false_keeps_no_real_value': 'try:\\n    match planted:\\n        case Holder(meta=m) if False:\\n'
                                       '            pass\\nexcept Exception:\\n    pass\\ngot = m',
    'guard_runs_after_vetting': 'got = None\\nmatch planted:\\n    case Holder(meta=m) if m(\"X\", (), {}):\\n'
                                '        pass',
}
out = {}
for name, code in cases.items():
    status, got = run(code)
    out[name] = status == 'refused' or type(got).__name__ == '_RefusedCapture'
    if status == 'ran' and got is not None and type(got).__name__ != '_RefusedCapture':
        out[name] = False
status, got = run('match planted:\\n    case Holder(uw=u):\\n        got = u')
out['replaced_comes_back_replaced'] = status == 'ran' and got is g._update_wrapper
print(sorted(k for k, ok in out.items() if not ok))
"""


def test_values_a_pattern_reads_natively_are_vetted_like_guarded_reads():
    done = subprocess.run([sys.executable, "-c", _PLANTED_SCRIPT, str(ENV_DIR)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def test_ordinary_matches_keep_their_semantics(repl):
    res = repl.execute(
        "import dataclasses, collections, enum\n"
        "@dataclasses.dataclass\nclass P:\n    x: int\n    y: int\n"
        "Pt = collections.namedtuple('Pt', 'u v')\n"
        "class Color(enum.Enum):\n    RED = 1\n"
        "def f(o):\n"
        "    match o:\n"
        "        case P(x, y) if x > 0:\n            return ('P', x, y)\n"
        "        case {'a': a, **rest}:\n            return ('m', a, rest)\n"
        "        case [1, *xs]:\n            return ('s', xs)\n"
        "        case P(x=0) | P(y=0) as z:\n            return ('z', z.y)\n"
        "        case Pt(u=u, v=v):\n            return ('pt', u + v)\n"
        "        case Color.RED:\n            return 'red'\n"
        "        case str() as s:\n            return s\n"
        "        case other:\n            return ('o', other)\n"
        "print(f(P(1, 2)), f(P(0, 2)), f(P(-1, 2)), f({'a': 1, 'b': 2}), f([1, 2, 3]), f(Pt(1, 2)), f(Color.RED),"
        " f('hi'), f(5))\n"
        "match P(1, 2):\n    case P(x, y) if False:\n        pass\n"
        "print(x, y)\n"
        "class K:\n    match P(3, 4):\n        case P(u, v):\n            w = u + v\n"
        "print(K.w)"
    )
    assert res.error is None, res.error
    assert res.stdout == ("('P', 1, 2) ('z', 2) ('o', P(x=-1, y=2)) ('m', 1, {'b': 2}) ('s', [2, 3]) ('s', [2]) red hi "
                          "('o', 5)\n1 2\n7\n")


# functools.update_wrapper (the real one, which trusted code calls: lru_cache, contextmanager ...)
# copied wrapped.__dict__ into the wrapper; with a host class that is its raw methods, and the
# real str.format walks its fields with the real getattr: from any host Python function to its
# module's globals (contextlib's hold os).
_ENV_BY_FORMAT = "'{0.__globals__[os].environ}', contextlib.contextmanager"
_ENV_BY_FORMAT_MAP = "'{f.__globals__[os].environ}', {'f': contextlib.contextmanager}"

ROUND7 = [
    *[attack("review7", f"host_class_dict_copied_by_{name}_{method}",
             "import contextlib, functools, typing\n@contextlib.contextmanager\ndef cm():\n    yield\n"
             f"h = {expr}\nenv = h.{method}({args})\nprint(env)\nif 'PATH' in env:\n    " + WIN, errors=ANY_ERROR,
             forbid=(SECRET_VALUE,))
      for name, expr in (("lru_cache", "functools.lru_cache(str)"), ("cache", "functools.cache(str)"),
                         ("contextmanager", "contextlib.contextmanager(str)"),
                         ("context_decorator", "cm()(str)"),
                         ("no_type_check_decorator", "typing.no_type_check_decorator(str)"))
      for method, args in (("format", _ENV_BY_FORMAT), ("format_map", _ENV_BY_FORMAT_MAP))],
    # __match_args__ private names were checked against the pattern's class, not the subject's
    attack("review7", "match_args_private_name_from_a_host_base_of_a_subclass",
           "import random\nclass C:\n    __match_args__ = ('_randbelow',)\n"
           "class D(C, random.Random):\n    pass\n"
           "match D():\n    case C(r):\n        " + WIN),
    # the real str.format, bound: `format` is checked in __match_args__ of str subclasses only
    *[attack("review7", f"match_args_{method}_of_a_str_subclass_via_another_base",
             f"import contextlib\nclass C:\n    __match_args__ = ('{method}',)\nclass D(C, str):\n    pass\n"
             f"match D('{template}'):\n    case C(f):\n        env = f({arg})\n"
             "        print(env)\n        if '/' in env:\n            " + WIN, errors=ANY_ERROR)
      for method, template, arg in (
          ("format", "{0.__globals__[os].environ[PATH]}", "contextlib.contextmanager"),
          ("format_map", "{f.__globals__[os].environ[PATH]}", "{'f': contextlib.contextmanager}"))],
    # the codec modules guarded_import lets through for C code were bound natively by `import a.b as c`
    attack("review7", "import_of_a_preloaded_codec_module_binds_it",
           "import encodings.idna as e\nif e is not None:\n    " + WIN),
    attack("review7", "import_of_a_preloaded_codec_package_binds_it",
           "import encodings.latin_1\nif encodings is not None:\n    " + WIN),
    # collections.UserString.format is self.data.format(...) in Python: the real str.format
    *[attack("review7", f"user_string_{method}_is_the_real_str_{method}",
             f"import collections, contextlib\n{prefix}env = {call}\nprint(env)\nif '/' in env:\n    " + WIN,
             errors=ANY_ERROR)
      for method, prefix, call in (
          ("format", "", "collections.UserString('{0.__globals__[os].environ[PATH]}')"
                         ".format(contextlib.contextmanager)"),
          ("format_map", "", "collections.UserString('{f.__globals__[os].environ[PATH]}')"
                             ".format_map({'f': contextlib.contextmanager})"),
          ("format_unbound", "", "collections.UserString.format(collections.UserString("
                                 "'{0.__globals__[os].environ[PATH]}'), contextlib.contextmanager)"),
          ("format_subclass_super", "class U(collections.UserString):\n    def format(self, *a):\n"
                                    "        return super().format(*a)\n",
           "U('{0.__globals__[os].environ[PATH]}').format(contextlib.contextmanager)"))],
    attack("review7", "pattern_helper_names_are_reserved",
           "_match_bind_ = lambda v: v\nmatch [1]:\n    case [a]:\n        " + WIN),
    attack("review7", "pattern_helper_cannot_be_read_or_rebound_via_walrus",
           "match [1]:\n    case [a] if (_match_check_ := print):\n        " + WIN),
]


@pytest.mark.parametrize("a", ROUND7)
def test_round7_findings_are_refused(fresh, a):
    check_refused(fresh, a, fresh.execute(a.code))


_STR_METHODS_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
import _guards as g
g.preload_modules()
print([g.guarded_getitem({'f': str.format}, 'f') is g._safe_format,
       g.guarded_getitem([str.format_map], 0) is g._safe_format_map])
"""


def test_real_str_format_is_replaced_wherever_it_is_read_from():
    """The identity tables know the unbound str.format / format_map: read off any object or
    container (not only off ``str``) they come back as the guarded versions."""
    done = subprocess.run([sys.executable, "-c", _STR_METHODS_SCRIPT, str(ENV_DIR)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[True, True]", done.stdout


def test_wrapping_keeps_the_sandboxs_own_function_attributes(repl):
    res = repl.execute(
        "import functools, contextlib\n"
        "def f(x):\n    return x * 2\nf.tag = 'mine'\n"
        "g = functools.lru_cache(f)\n"
        "def gen():\n    yield 3\ngen.note = 'n'\n"
        "cm = contextlib.contextmanager(gen)\n"
        "with cm() as v:\n    pass\n"
        "h = functools.lru_cache(str)\n"
        "class K:\n    def m(self):\n        return 9\n    m.kind = 'meth'\n"
        "bound = functools.lru_cache(K().m)\n"
        "print(g(4), g.tag, g.__name__, cm.note, v, h(5), h.__name__, '{0}'.format(1), str.format('{}', 2), "
        "bound(), bound.kind)"
    )
    assert res.error is None, res.error
    assert res.stdout == "8 mine f n 3 5 str 1 2 9 meth\n"


def test_private_match_args_of_the_sandboxs_own_classes_still_work(repl):
    res = repl.execute(
        "import dataclasses, random\n"
        "@dataclasses.dataclass\nclass A:\n    _x: int\n    y: int = 0\n"
        "class B(A):\n    pass\n"
        "class R(random.Random):\n    __match_args__ = ('_mine',)\n    _mine = 7\n"
        "match B(1, 2):\n    case A(p, q):\n        first = (p, q)\n"
        "match R():\n    case R(m):\n        second = m\n"
        "print(first, second)"
    )
    assert res.error is None, res.error
    assert res.stdout == "(1, 2) 7\n"


def test_a_pattern_captures_a_guarded_bound_format(repl):
    res = repl.execute(
        "class C:\n    __match_args__ = ('format',)\nclass D(C, str):\n    pass\n"
        "match D('<{0}|{x}>'):\n    case C(f):\n        print(f(1, x=2))\n"
        "match D('{0.__class__}'):\n    case C(f):\n        f(1)\n"
    )
    assert res.stdout == "<1|2>\n", res.stdout
    assert res.error_type == "SandboxPolicyError", res.error
    assert_healthy(repl)


def test_user_string_format_still_formats(repl):
    res = repl.execute(
        "import collections\n"
        "class U(collections.UserString):\n    pass\n"
        "u = collections.UserString('<{0}|{x}>')\n"
        "print(u.format(1, x=2), U('{a}').format_map({'a': 3}), collections.UserString.format(u, 4, x=5), "
        "u.format.__name__, u.upper())"
    )
    assert res.error is None, res.error
    assert res.stdout == "<1|2> 3 <4|5> format <{0}|{X}>\n"
