"""Escape corpus, fourteenth review: the bookkeeping enum members are made by, rewritten by model code.

Same conventions as ``test_escapes.py`` (its helpers and fixtures come from ``_escape_helpers``).

- The worst: round 12 made a ``__new__`` of a class statement check what it returns, because Enum
  natively treats that as the new member (``enum._proto_member.__set_name__``: ``_value_``, ``_name_``
  and ``__objclass__`` set on it, ``member.__init__(*args)`` called with the member's value). But the
  ``__new__`` it calls is not read from the class statement: it is ``cls._new_member_``, which EnumType
  puts into the enum class's own dict, and an enum class is the sandbox's own, so model code could
  assign it. A member's ``__init__`` setting ``type(self)._new_member_ = staticmethod(lambda cls, *a:
  D)`` made the next member ``D`` itself, an own dataclass's class: ``D.__init__(dataclasses, f)``,
  unbound and generated (it writes natively), set ``dataclasses.repr = f``, and the next frozen
  dataclass exec'd ``f``'s text as its ``__setattr__`` (round 13's way): the real ``os.environ``. With a
  module returned, the module was renamed. ``Flag._missing_`` reads ``cls._member_type_`` the same way
  (its ``__new__(cls, value)`` makes a pseudo-member, which gets ``_value_`` / ``_name_``): with
  ``_member_type_`` the Flag itself and ``_value2member_map_`` a model dict answering the second time,
  a module got them. EnumType's bookkeeping names (``_guards.ENUM_BOOKKEEPING``) can no longer be
  assigned or deleted in the sandbox (compiled stores and ``setattr``/``delattr``).
- ``enum._proto_member`` itself was reachable (``type(self).B`` in a member's ``__init__`` while ``B``
  is still one; then ``type(it)(value)``), and ``type.__new__`` calls its ``__set_name__`` for a value
  in any class's dict (or a ``dataclasses.field`` default, which forwards it): in an ordinary class
  whose body defines ``_new_member_``, ``_use_args_`` and the maps, the same writes and ``__init__``
  call on whatever that returned. Its ``__set_name__`` now works for an enum class only (an error in
  ``__set_name__`` reads ``RuntimeError`` in this Python).

Probed and found contained (kept below): a traceback handed to ``__exit__`` (opaque: no attribute,
not copyable, no ``TracebackType`` without a frame), the coroutine ``AsyncExitStack().aclose()``
returns (driven by ``send``; ``cr_frame`` refused), ``typing.get_overloads`` of an own object posing
as another module's function (it hands out that module's registered overload stubs, host functions
whose ``__globals__`` / ``__code__`` stay unreadable), ``str.format_map`` / ``operator.attrgetter`` /
``functools.reduce(getattr, ...)`` on dunders, a ``string.Template`` subclass, ``copy.copy`` of a
traceback, ``enum.property`` / ``functools.cached_property`` / ``dataclasses.Field`` ``__set_name__`` in an
own class (they record the name, or forward to the default's own ``__set_name__``).
"""

from __future__ import annotations

import pytest
from _escape_helpers import LEAK_ONLY, POLICY, WIN, assert_healthy, attack, check_refused

_SET_NAME_ERROR = ("RuntimeError", *POLICY)  # type.__new__ wraps an error in __set_name__ (3.11)
_EVIL = ("self.__dict__.setdefault('env', [c for c in ().__class__.__base__.__subclasses__() "
         "if c.__name__ == '_wrap_close'][0].__init__.__globals__['environ'])")
_FROZEN_ENV = ("@dataclasses.dataclass(frozen=True)\nclass F:\n    x: int = 0\nclass G(F):\n    pass\n"
               "g = G()\ntry:\n    g.y = 1\nexcept Exception:\n    pass\nenv = g.env\nprint(env)\n"
               "if type(env).__name__ == '_Environ':\n    " + WIN)
_DC = "@dataclasses.dataclass\nclass D:\n    repr: object\n"
# a _proto_member instance: B is one while A's __init__ runs
_PROTO = ("got = []\nclass E(enum.Enum):\n    A = 1\n    B = 2\n    def __init__(self, v):\n"
          "        if not got:\n            got.append(type(self).B)\nP = type(got[0])\n")
_OWN_BOOKKEEPING = ("    _member_type_ = object\n    _use_args_ = True\n    _member_names_ = []\n"
                    "    _member_map_ = {}\n    _value2member_map_ = {}\n"
                    "    @staticmethod\n    def _new_member_(cls, *args):\n        return D\n")

ROUND14 = [
    # the worst: _new_member_ rewritten by a member's __init__, the next member made by it
    attack("review14", "enum_new_member_rewritten_puts_repr_into_dataclasses_real_os_environ",
           f"import enum, dataclasses\nevil = {_EVIL!r}\n" + _DC +
           "class E(enum.Enum):\n    A = 1\n    B = (dataclasses, lambda name: evil)\n"
           "    def __init__(self, *v):\n        if v == (1,):\n"
           "            type(self)._new_member_ = staticmethod(lambda cls, *a: D)\n" + _FROZEN_ENV),
    attack("review14", "enum_new_member_set_by_setattr_renames_a_module",
           "import enum, json\nclass E(enum.Enum):\n    A = 1\n    B = 'planted'\n"
           "    def __init__(self, *v):\n        if v == (1,):\n"
           "            setattr(type(self), '_new_member_', staticmethod(lambda cls, *a: json))\n"
           "if json.__name__ == 'planted':\n    " + WIN, errors=_SET_NAME_ERROR),
    attack("review14", "enum_new_member_set_in_a_descriptors_set_name",
           "import enum, json\nclass Hook:\n    def __get__(self, obj, owner=None):\n        return self\n"
           "    def __set_name__(self, owner, name):\n"
           "        setattr(owner, '_new_member_', staticmethod(lambda cls, *a: json))\n"
           "class E(enum.Enum):\n    hook = Hook()\n    A = 'planted'\n"
           "if json.__name__ == 'planted':\n    " + WIN, errors=_SET_NAME_ERROR),
    attack("review14", "enum_bookkeeping_deleted",
           "import enum\nclass E(enum.Enum):\n    A = 1\ndel E._member_map_\n" + WIN),
    attack("review14", "flag_missing_member_type_writes_into_a_module",
           "import enum, json\nclass M(dict):\n    n = [0]\n    def __getitem__(self, k):\n"
           "        self.n[0] += 1\n        if self.n[0] > 1:\n            return json\n        raise KeyError(k)\n"
           "class F(enum.Flag):\n    A = 1\nF._member_type_ = F\nF._value2member_map_ = M()\n"
           "try:\n    F(0)\nexcept Exception:\n    pass\nif '_value_' in dir(json):\n    " + WIN),
    # a _proto_member in an ordinary class: its bookkeeping is the model's
    attack("review14", "proto_member_in_an_ordinary_class_puts_repr_into_dataclasses_real_os_environ",
           f"import enum, dataclasses\nevil = {_EVIL!r}\n" + _PROTO + _DC +
           "class Own:\n" + _OWN_BOOKKEEPING + "    a = P((dataclasses, lambda name: evil))\n" + _FROZEN_ENV,
           errors=_SET_NAME_ERROR),
    attack("review14", "proto_member_as_a_field_default_renames_a_module",
           "import enum, dataclasses, json\n" + _PROTO + "D = json\n"
           "class Own:\n" + _OWN_BOOKKEEPING + "    a = dataclasses.field(default=P('planted'))\n"
           "if json.__name__ == 'planted':\n    " + WIN, errors=_SET_NAME_ERROR),
    attack("review14", "proto_member_in_an_own_class_set_later_and_remade_by_dataclass_slots",
           "import enum, dataclasses, json\n" + _PROTO + "D = json\n"
           "class Own:\n" + _OWN_BOOKKEEPING + "Own.a = P('planted')\n"
           "dataclasses.dataclass(slots=True)(Own)\n"
           "if json.__name__ == 'planted':\n    " + WIN, errors=_SET_NAME_ERROR),
]

_TB = ("class CM:\n    def __enter__(self):\n        return self\n    def __exit__(self, t, v, tb):\n"
       "        global TB\n        TB = tb\n        return True\nwith CM():\n    1 / 0\n")

# Probed and contained: kept so they stay so. LEAK_ONLY where ordinary code may run.
CONTAINED = [
    attack("review14", "traceback_from_exit_is_opaque", _TB + "n = TB.tb_lineno\n" + WIN),
    attack("review14", "traceback_from_exit_is_not_copied", _TB + "import copy\ncopy.copy(TB)\n" + WIN,
           errors=("TypeError",)),
    attack("review14", "traceback_type_needs_a_frame", _TB + "t = type(TB)(None, None, 0, 0)\n" + WIN,
           errors=("TypeError",)),
    attack("review14", "async_exit_stack_coroutine_frame",
           "import contextlib\nc = contextlib.AsyncExitStack().aclose()\nf = getattr(c, 'cr_' + 'frame')\n" + WIN),
    attack("review14", "get_overloads_stubs_keep_their_globals",
           "import typing\nclass O:\n    pass\nf, o = O(), O()\nf.__dict__['__module__'] = 'RestrictedPython.Limits'\n"
           "f.__dict__['__qualname__'] = 'limited_range'\no.__dict__['__func__'] = f\n"
           "stubs = typing.get_overloads(o)\nfor s in stubs:\n    getattr(s, '__glob' + 'als__')\n" + WIN),
    attack("review14", "format_map_walks_through_the_guards",
           "class A:\n    pass\nt = '{a.__init__.__glob' + 'als__}'\nt.format_map({'a': A()})\n" + WIN),
    attack("review14", "reduce_getattr_on_a_dunder",
           "import functools\nfunctools.reduce(getattr, ['__class__', '__base__'], 1)\n" + WIN),
    attack("review14", "template_subclass_substitutes_items_only",
           "import string, json\nclass T(string.Template):\n    delimiter = '%'\n"
           "s = T('%dumps').substitute({'dumps': 1})\nif s != '1':\n    " + WIN, errors=LEAK_ONLY),
    attack("review14", "host_set_name_hooks_record_the_name_only",
           "import enum, functools, dataclasses, json\n"
           "class A:\n    p = enum.property(lambda self: 1)\n    c = functools.cached_property(lambda self: json)\n"
           "    f = dataclasses.field(default=functools.cached_property(lambda self: 2))\n"
           "a = A()\nif a.c is not json or hasattr(json, 'c'):\n    " + WIN, errors=LEAK_ONLY),
]


@pytest.mark.parametrize("a", ROUND14)
def test_round14_findings_are_refused(fresh, a):
    check_refused(fresh, a, fresh.execute(a.code))


@pytest.mark.parametrize("a", CONTAINED)
def test_round14_probes_stay_contained(fresh, a):
    check_refused(fresh, a, fresh.execute(a.code))


def test_host_modules_keep_their_names_and_globals_after_the_attempts(repl):
    for a in ROUND14:
        repl.execute(a.values[0].code)
    res = repl.execute(
        "import json, dataclasses\n@dataclasses.dataclass(frozen=True)\nclass F:\n    x: int = 0\n"
        "class G(F):\n    pass\ng = G()\ng.y = 1\n"
        "print(json.__name__, dataclasses.__name__, hasattr(dataclasses, 'repr'), '_value_' in dir(json),"
        " hasattr(g, 'env'), g.y, F(2), json.dumps([1]))")
    assert res.error is None, res.error
    assert res.stdout == "json dataclasses False False False 1 F(x=2) [1]\n"
    assert_healthy(repl)


def test_enums_still_work(repl):
    res = repl.execute(
        "import enum\n"
        "class Planet(enum.Enum):\n    EARTH = (5.97, 6.37)\n    MARS = (0.642, 3.39)\n"
        "    def __init__(self, mass, radius):\n        self.mass, self.radius = mass, radius\n"
        "class Coord(bytes, enum.Enum):\n    X = (0, 'x')\n"
        "    def __new__(cls, value, label):\n        obj = bytes.__new__(cls, [value])\n"
        "        obj._value_ = value\n        obj.label = label\n        return obj\n"
        "class Auto(enum.Enum):\n"
        "    @staticmethod\n    def _generate_next_value_(name, start, count, last_values):\n"
        "        return name.lower()\n    A = enum.auto()\n"
        "class Lax(enum.Enum):\n    ONE = 1\n"
        "    @classmethod\n    def _missing_(cls, value):\n        return cls.ONE\n"
        "class Perm(enum.IntFlag):\n    R = 4\n    W = 2\n"
        "Color = enum.Enum('Color', 'RED GREEN')\n"
        "print(Planet.MARS.radius, Coord.X.label, Coord(0).name, Auto.A.value, Lax(9).name, Perm(6), Perm.R | 1,"
        " list(Color), len(Planet._member_map_), Planet._member_type_.__name__, Perm._member_names_)"
    )
    assert res.error is None, res.error
    assert res.stdout == ("3.39 x X a ONE 6 5 [<Color.RED: 1>, <Color.GREEN: 2>] 2 object ['R', 'W']\n")
