"""Escape corpus, twelfth review: what host code does with the object a ``__new__`` of the sandbox returns.

Same conventions as ``test_escapes.py`` (its helpers and fixtures come from ``_escape_helpers``).

- The worst: Enum makes each member with the class's ``__new__`` and then, natively, treats what it
  returned as the new member (``enum._proto_member.__set_name__``): it sets ``_value_``, ``_name_`` and
  ``__objclass__`` on it and calls ``member.__init__(*args)`` with the member's value as arguments. A
  ``__new__`` of the sandbox may return any object. Returning a class of the sandbox made that call
  ``W.__init__(*args)``, unbound: with ``@dataclass class W: _field_assign: object`` and the value
  ``(dataclasses, f)`` it was the generated ``__init__`` writing ``dataclasses._field_assign = f`` (round
  11's finding, past its fix, which checks reads off the class only), and the next dataclass ran
  ``f``'s source line natively: the real ``os.environ``. Returning a host module renamed it
  (``module.__init__``), a host enum member got its name overwritten. ``Flag._missing_`` does the
  same with ``_member_type_.__new__`` (a mixin of the sandbox) for values that are not members, and
  ``Fraction.__new__`` writes ``_numerator`` / ``_denominator`` onto what ``super().__new__(cls)``
  returns, which a class of the sandbox later in the MRO chooses (an existing Fraction changed its
  value in place). A ``__new__`` of a class statement is now handed to the class checking what it
  returns: an instance of the class it was called for, an object of the sandbox's own, or immutable
  plain data.
- EnumType puts host callables into each enum class's own dict under private names, which the
  guards let through as the sandbox's own: ``E._new_member_`` (``object.__new__``, an instance of any
  class past its ``__init__``: round 11's ``A.__new__(json.JSONEncoder)`` by another name, also off an
  instance, where a builtin does not bind) and ``E._value_repr_`` (for a dataclass mixin its generated
  ``__repr__``, which takes any ``self`` and reads its fields natively: ``random._os``). Both names are
  refused on enum classes and members.
"""

from __future__ import annotations

import pytest
from _escape_helpers import LEAK_ONLY, WIN, assert_healthy, attack, check_refused

_DC_LINE = ("self.env=[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == '_wrap_close'][0]"
            ".__init__.__globals__['environ']")

ROUND12 = [
    # the worst: an enum member's __init__ called natively on a dataclass of the sandbox, unbound
    attack("review12", "enum_new_returns_a_dataclass_whose_init_writes_a_module_real_os_environ",
           "import dataclasses, enum\n@dataclasses.dataclass\nclass W:\n    _field_assign: object\n"
           f"line = {_DC_LINE!r}\n"
           "class E(enum.Enum):\n    def __new__(cls, *a):\n        return W\n"
           "    a = (dataclasses, lambda frozen, name, value, self_name: line)\n"
           "@dataclasses.dataclass\nclass V:\n    x: int = 0\nenv = V().env\nprint(env)\n"
           "if type(env).__name__ == '_Environ':\n    " + WIN),
    attack("review12", "enum_new_returns_a_host_module_which_is_renamed",
           "import enum, json\nclass E(enum.Enum):\n    def __new__(cls, *a):\n        return json\n"
           "    a = 'zzz'\nif json.__name__ == 'zzz':\n    " + WIN),
    attack("review12", "enum_new_returns_a_host_enum_member_which_is_renamed",
           "import enum, re\nclass E(enum.Enum):\n    def __new__(cls, *a):\n        return re.DOTALL\n"
           "    a = 1\nif re.DOTALL.name == 'a':\n    " + WIN),
    attack("review12", "enum_new_from_a_mixin_returns_a_host_module",
           "import enum, json\nclass M:\n    def __new__(cls, *a):\n        return json\n"
           "class E(M, enum.Enum):\n    a = 'zzz'\nif json.__name__ == 'zzz':\n    " + WIN),
    attack("review12", "enum_new_through_a_base_enum_returns_a_host_module",
           "import enum, json\nclass B(enum.Enum):\n    def __new__(cls, *a):\n        return json\n"
           "class E(B):\n    a = 'zzz'\nif json.__name__ == 'zzz':\n    " + WIN),
    attack("review12", "flag_missing_names_a_host_flag_the_mixin_new_returns",
           "import enum, re\nclass M(int):\n    def __new__(cls, v):\n        if v < 8:\n"
           "            return super().__new__(cls, v)\n        return re.IGNORECASE\n"
           "class F(M, enum.Flag, boundary=enum.KEEP):\n    a = 1\n    b = 2\n"
           "try:\n    F(8)\nexcept ValueError:\n    pass\n"
           "if re.IGNORECASE.name is None:\n    " + WIN),
    attack("review12", "fraction_new_writes_onto_what_a_later_base_new_returns",
           "import fractions\nfr = fractions.Fraction(1, 2)\nclass M:\n    def __new__(cls, *a, **k):\n"
           "        return fr\nclass F(fractions.Fraction, M):\n    pass\nF(3)\n"
           "if fr.numerator == 3:\n    " + WIN),
    attack("review12", "fraction_new_writes_onto_a_host_module",
           "import fractions, json\nclass M:\n    def __new__(cls, *a, **k):\n        return json\n"
           "class F(fractions.Fraction, M):\n    pass\nF(3)\n" + WIN),
    attack("review12", "staticmethod_new_returns_a_host_module",
           "import enum, json\nclass E(enum.Enum):\n    __new__ = staticmethod(lambda cls, *a: json)\n"
           "    a = 'zzz'\nif json.__name__ == 'zzz':\n    " + WIN),
    attack("review12", "enum_value_repr_is_a_dataclass_repr_taking_any_self",
           "import dataclasses, enum, random\n@dataclasses.dataclass\nclass D:\n    _os: object = None\n"
           "class E(D, enum.Enum):\n    a = 1\nif 'module' in E._value_repr_(random):\n    " + WIN),
    attack("review12", "enum_new_member_is_object_new_of_any_class",
           "import enum, json\nclass E(enum.Enum):\n    a = 1\nx = E._new_member_(json.JSONEncoder)\n" + WIN),
    attack("review12", "enum_new_member_off_a_member_is_object_new_of_any_class",
           "import enum, json\nclass E(enum.Enum):\n    a = 1\nx = E.a._new_member_(json.JSONEncoder)\n" + WIN),
    attack("review12", "str_enum_new_member_is_unwrapped",
           "import enum\nclass S(enum.StrEnum):\n    a = 'x'\nf = S._new_member_\n" + WIN),
]

# Probed and contained: kept so they stay so. LEAK_ONLY where ordinary code may run.
CONTAINED = [
    attack("review12", "contextmanager_copies_only_own_class_dicts",
           "import contextlib, json\nh = contextlib.contextmanager(json.JSONEncoder)\nh.default\n" + WIN,
           errors=("AttributeError",)),
    attack("review12", "typing_overloads_of_a_host_function_are_its_own_stubs",
           "import typing, json\nif typing.get_overloads(json.dumps):\n    " + WIN, errors=LEAK_ONLY),
    attack("review12", "a_traceback_passed_to_exit_has_nothing_readable",
           "class C:\n    def __enter__(self):\n        return self\n    def __exit__(self, t, v, tb):\n"
           "        self.tb = tb\n        return True\nc = C()\nwith c:\n    1 / 0\nc.tb.tb_lineno\n" + WIN),
    attack("review12", "a_traceback_is_not_copied",
           "import copy\nclass C:\n    def __enter__(self):\n        return self\n    def __exit__(self, t, v, tb):\n"
           "        self.tb = tb\n        return True\nc = C()\nwith c:\n    1 / 0\ncopy.copy(c.tb)\n" + WIN,
           errors=("TypeError",)),
]


@pytest.mark.parametrize("a", ROUND12)
def test_round12_findings_are_refused(fresh, a):
    check_refused(fresh, a, fresh.execute(a.code))


@pytest.mark.parametrize("a", CONTAINED)
def test_round12_probes_stay_contained(fresh, a):
    check_refused(fresh, a, fresh.execute(a.code))


def test_host_objects_keep_their_state_after_the_attempts(repl):
    for a in ROUND12:
        repl.execute(a.values[0].code)
    res = repl.execute("import json, re, dataclasses\n@dataclasses.dataclass\nclass V:\n    x: int = 0\n"
                       "print(json.__name__, re.DOTALL.name, re.IGNORECASE.name, V(1), json.dumps([1]))")
    assert res.error is None, res.error
    assert res.stdout == "json DOTALL IGNORECASE V(x=1) [1]\n"
    assert_healthy(repl)


def test_new_still_works_in_ordinary_classes(repl):
    res = repl.execute(
        "import enum, fractions, dataclasses, copy\n"
        "class Single:\n    _it = None\n    def __new__(cls):\n        if cls._it is None:\n"
        "            cls._it = super().__new__(cls)\n        return cls._it\n"
        "class Shape:\n    def __new__(cls, kind=None):\n        if kind == 'sq':\n            return Square()\n"
        "        if kind == 'n':\n            return 7\n        return super().__new__(cls)\n"
        "class Square(Shape):\n    pass\n"
        "class P(tuple):\n    def __new__(cls, x, y):\n        return super().__new__(cls, (x, y))\n"
        "class Q(P):\n    pass\n"
        "class Base:\n    pass\n"
        "class Planet(Base, enum.Enum):\n    def __new__(cls, mass):\n        obj = Base.__new__(cls)\n"
        "        obj._value_ = mass\n        return obj\n    EARTH = 6\n    MARS = 1\n"
        "class S(str, enum.Enum):\n    def __new__(cls, v, label):\n        obj = super().__new__(cls, v)\n"
        "        obj._value_ = v\n        obj.label = label\n        return obj\n    A = ('a', 'Ay')\n"
        "class Perm(enum.IntFlag):\n    R = 4\n    W = 2\n"
        "class F(fractions.Fraction):\n    pass\n"
        "class Lazy(Base):\n    __new__ = staticmethod(lambda cls, *a: Base.__new__(cls))\n"
        "    def __init__(self, v=0):\n        self.v = v\n"
        "@dataclasses.dataclass\nclass DC:\n    x: int = 1\n    def __new__(cls, *a, **k):\n"
        "        return super().__new__(cls)\n"
        "print(Single() is Single(), type(Shape('sq')).__name__, Shape('n'), type(Shape()).__name__, Q(1, 2),"
        " Planet.EARTH.value, Planet(1).name, S.A.label, S('a') is S.A, Perm(6), F(3, 6), Lazy(4).v,"
        " copy.deepcopy(DC(5)), type(Square.__new__(Square)).__name__)"
    )
    assert res.error is None, res.error
    assert res.stdout == ("True Square 7 Shape (1, 2) 6 MARS Ay True 6 1/2 4 DC(x=5) Square\n")


def test_enum_internals_that_stay_readable(repl):
    res = repl.execute(
        "import enum\nclass E(enum.Enum):\n    a = 1\n    b = 2\n"
        "print(E._member_names_, list(E._member_map_), E._value2member_map_[2], E._member_type_.__name__,"
        " E.a._value_, E.a._name_)"
    )
    assert res.error is None, res.error
    assert res.stdout == "['a', 'b'] ['a', 'b'] E.b object 1 a\n"
