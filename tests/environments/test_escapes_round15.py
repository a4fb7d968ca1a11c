"""Escape corpus, fifteenth review: a host function that returns the real ``getattr``, and host
decorators that write onto whatever they wrap.

Same conventions as ``test_escapes.py`` (its helpers and fixtures come from ``_escape_helpers``).

- The worst: ``enum.pickle_by_enum_name(member, proto)`` (a public helper meant to be a class's
  ``__reduce_ex__``) returns ``(getattr, (type(member), member._name_))``: the real ``getattr`` builtin,
  in a call's result, which no guard sees. ``g, _ = enum.pickle_by_enum_name(E.A, 2)`` then read any
  dunder of anything: ``().__class__.__base__.__subclasses__()`` to ``os._wrap_close.__init__.__globals__``,
  the real ``os.environ``. Refused now (``_DENIED_MODULE_ATTRS['enum']``). Also, as a second layer, the
  real builtins the sandbox replaces or refuses (``getattr``, ``setattr``, ``__import__``, ``eval``,
  ``open`` ...) are in ``_BY_ID``: read out of a host container by a guarded read (``[0]`` of such a
  result) they come back as the sandbox's version, or are refused.
- ``abc.abstractclassmethod`` / ``abc.abstractstaticmethod`` set ``callable.__isabstractmethod__ = True``
  natively on what they wrap: ``abc.abstractclassmethod(json)`` planted an attribute on a host module,
  ``abc.abstractstaticmethod(json.dumps)`` marked a host function abstract (an ABC holding it can no
  longer be instantiated), and an own subclass of either did the same on a host class. Both are now
  handed out as subclasses that take the sandbox's own functions and objects only (low: the name and
  value are fixed, but it is a write onto host modules).

Probed and found contained (kept below): the new ``int.__new__`` / ``object.__new__`` / ``tuple.__new__``
wrapper (``_BUILTIN_NEWS``) with a host class, ``bool``, ``object`` itself, its ``__closure__`` /
``__globals__`` / ``__self__`` and writes to it; ``object.__new__`` of an own subclass of a C type with
its own ``tp_new`` (``type(json)``, ``random.Random``, ``decimal.Decimal``: CPython refuses it as not
safe), of an own abstract class, and of own subclasses of Python host classes (``json.JSONEncoder``,
``contextlib.ExitStack``: the ``__init__`` skipped leaves an own object without attributes the model
could not set anyway); a fake own enum member made with ``object.__new__`` / ``int.__new__``; EnumType
bookkeeping by other doors (a class body defining ``__new_member__``, ``__init_subclass__`` of an own
enum base calling ``setattr``, a model module planted in ``_value2member_map_`` or ``_boundary_``
rewritten: they change the own enum only); ``enum.global_str`` on a host object (it reads ``_name_``
natively: only enum members have it); a dataclass field named ``__module__`` / ``__class__``;
``gi_frame`` in a class pattern; ``typing.Annotated`` over a lambda returning a module (like round 13's
``GenericAlias``: ``__orig_class__`` is written there, but stays unreadable).
Not fixed (low, noted): public mutable containers of allowed modules (``calendar.mdays``,
``typing.EXCLUDED_ATTRIBUTES``, ``hashlib.algorithms_available``) can be changed in place: worker-local
data of the sandbox's own computations, nothing of the host's reached.
"""

from __future__ import annotations

import pytest
from _escape_helpers import LEAK_ONLY, POLICY, WIN, assert_healthy, attack, check_refused

_ENUM = "import enum, json\nclass E(enum.Enum):\n    A = 1\n"
# the real getattr as g: to os.environ
_TO_ENV = ("sub = g(g(g((), '__class__'), '__base__'), '__subclasses__')()\n"
           "w = [c for c in sub if c.__name__ == '_wrap_close'][0]\n"
           "env = g(g(w, '__init__'), '__globals__')['environ']\nprint(env)\n"
           "if 'PATH' in env:\n    ")

ROUND15 = [
    # the worst: the real getattr in a call's result
    attack("review15", "enum_pickle_by_enum_name_hands_out_the_real_getattr_real_os_environ",
           _ENUM + "g, args = enum.pickle_by_enum_name(E.A, 2)\n" + _TO_ENV + WIN),
    attack("review15", "enum_pickle_by_enum_name_read_off_a_proxy",
           _ENUM + "from enum import pickle_by_enum_name\ng = pickle_by_enum_name(E.A, 2)[0]\n" + _TO_ENV + WIN,
           errors=("ImportError", *POLICY)),
    attack("review15", "enum_pickle_by_enum_name_by_getattr",
           _ENUM + "g = getattr(enum, 'pickle_by_' + 'enum_name')(E.A, 2)[0]\n" + _TO_ENV + WIN),
    # host decorators writing onto what they wrap
    attack("review15", "abstractclassmethod_plants_an_attribute_on_a_module",
           "import abc, json\nabc.abstractclassmethod(json)\nif 'isabstractmethod' in str(dir(json)):\n    " + WIN),
    attack("review15", "abstractstaticmethod_marks_a_host_function_abstract",
           "import abc, json\nabc.abstractstaticmethod(json.dumps)\nclass A(abc.ABC):\n    f = json.dumps\n"
           "try:\n    A()\nexcept TypeError:\n    " + WIN),
    attack("review15", "abstractclassmethod_subclass_plants_an_attribute_on_a_host_class",
           "import abc, json\nclass X(abc.abstractclassmethod):\n    pass\nX(json.JSONEncoder)\n"
           "if 'isabstractmethod' in str(dir(json.JSONEncoder)):\n    " + WIN),
    attack("review15", "abstractstaticmethod_from_import_on_a_module",
           "import json\nfrom abc import abstractstaticmethod\nabstractstaticmethod(json)\n"
           "if 'isabstractmethod' in str(dir(json)):\n    " + WIN),
]

_JE = "import json\nclass J(json.JSONEncoder):\n    pass\n"

# Probed and contained: kept so they stay so. LEAK_ONLY where ordinary code may run.
CONTAINED = [
    # the __new__ wrappers of the builtin types
    attack("review15", "object_new_of_a_host_class", "import json\nobject.__new__(json.JSONEncoder)\n" + WIN),
    attack("review15", "int_new_of_bool", "int.__new__(bool, 1)\n" + WIN),
    attack("review15", "object_new_of_object", "object.__new__(object)\n" + WIN),
    attack("review15", "dict_new_of_a_host_dict_subclass",
           "import collections\ndict.__new__(collections.Counter)\n" + WIN),
    attack("review15", "builtin_new_closure", "getattr(object.__new__, '__clo' + 'sure__')\n" + WIN),
    attack("review15", "builtin_new_globals", "getattr(int.__new__, '__glob' + 'als__')\n" + WIN),
    attack("review15", "builtin_new_self", "getattr(tuple.__new__, '__se' + 'lf__')\n" + WIN),
    attack("review15", "builtin_new_is_not_writable", "n = str.__new__\nn.__name__ = 'x'\n" + WIN),
    attack("review15", "object_new_of_an_own_module_subclass",
           "import json\nclass M(type(json)):\n    pass\nobject.__new__(M)\n" + WIN, errors=("TypeError",)),
    attack("review15", "object_new_of_own_subclasses_of_c_types",
           "import random, decimal\nclass R(random.Random):\n    pass\nclass D(decimal.Decimal):\n    pass\n"
           "for c in (R, D):\n    try:\n        object.__new__(c)\n        print('made')\n    except TypeError:\n"
           "        pass\nobject.__new__(R)\n" + WIN, errors=("TypeError",)),
    attack("review15", "object_new_of_an_own_abstract_class",
           "import abc\nclass A(abc.ABC):\n    @abc.abstractmethod\n    def f(self):\n        pass\n"
           "object.__new__(A)\n" + WIN, errors=("TypeError",)),
    attack("review15", "object_new_skips_a_host_init_of_an_own_object",
           _JE + "e = object.__new__(J)\ne.encode([1])\n" + WIN, errors=("AttributeError",)),
    attack("review15", "object_new_skips_exit_stack_init",
           "import contextlib\nclass S(contextlib.ExitStack):\n    pass\nobject.__new__(S).close()\n" + WIN,
           errors=("AttributeError",)),
    attack("review15", "fake_enum_members_stay_the_sandboxs",
           _ENUM + "e = object.__new__(E)\ne._value_, e._name_ = 5, 'Z'\n"
           "class F(enum.IntFlag):\n    A = 1\nf = int.__new__(F, 12)\nf._value_, f._name_ = 12, None\n"
           "print(repr(e), F.A | f, E(1))\nif json.__name__ != 'json':\n    " + WIN, errors=LEAK_ONLY),
    # EnumType bookkeeping by other doors
    attack("review15", "class_body_defines_new_member",
           "import json\nclass Mix:\n    __new_member__ = staticmethod(lambda cls, *a: json)\n" + WIN),
    attack("review15", "init_subclass_sets_use_args",
           "import enum\nclass B(enum.Enum):\n    def __init_subclass__(cls, **kw):\n"
           "        setattr(cls, '_use_args_', False)\nclass C(B):\n    A = 1\n" + WIN),
    attack("review15", "value2member_map_and_boundary_change_the_own_enum_only",
           _ENUM + "E._value2member_map_[7] = json\nclass F(enum.Flag):\n    A = 1\nF._boundary_ = enum.EJECT\n"
           "print(E(7) is json, F(99))\nif json.__name__ != 'json':\n    " + WIN, errors=LEAK_ONLY),
    attack("review15", "global_str_on_a_host_object",
           "import enum, random\nenum.global_str(random.Random())\n" + WIN, errors=("AttributeError",)),
    # elsewhere
    attack("review15", "dataclass_field_named_module",
           "import dataclasses\n@dataclasses.dataclass\nclass D:\n    __module__: str = 'json'\n" + WIN),
    attack("review15", "generator_frame_in_a_class_pattern",
           "def g():\n    yield 1\nx = g()\nG = type(x)\nmatch x:\n    case G(gi_frame=f):\n        print(f)\n" + WIN),
    attack("review15", "annotated_alias_over_a_lambda_writes_only_orig_class",
           "import typing, json\na = typing.Annotated[lambda: json, 1]\na()\ngetattr(json, '__orig_' + 'class__')\n"
           + WIN),
]


@pytest.mark.parametrize("a", ROUND15)
def test_round15_findings_are_refused(fresh, a):
    check_refused(fresh, a, fresh.execute(a.code))


@pytest.mark.parametrize("a", CONTAINED)
def test_round15_probes_stay_contained(fresh, a):
    check_refused(fresh, a, fresh.execute(a.code))


def test_host_modules_unchanged_after_the_attempts(repl):
    for a in ROUND15:
        repl.execute(a.values[0].code)
    res = repl.execute(
        "import abc, json\nclass A(abc.ABC):\n    f = json.dumps\n    g = json.JSONEncoder\n"
        "print(json.__name__, 'isabstractmethod' in str(dir(json)) or 'isabstractmethod' in str(dir(json.dumps)),"
        " type(A()).__name__, json.dumps([1]))")
    assert res.error is None, res.error
    assert res.stdout == "json False A [1]\n"
    assert_healthy(repl)


def test_new_of_builtin_types_and_abstract_decorators_still_work(repl):
    res = repl.execute(
        "import abc, copy, enum, collections\n"
        "class Single:\n    _it = None\n    def __new__(cls):\n        if cls._it is None:\n"
        "            cls._it = object.__new__(cls)\n        return cls._it\n"
        "class Meters(float):\n    def __new__(cls, v):\n        return float.__new__(cls, abs(v))\n"
        "class Tag(str):\n    def __new__(cls, s):\n        return str.__new__(cls, s.upper())\n"
        "class Pair(tuple):\n    def __new__(cls, a, b):\n        return tuple.__new__(cls, (a, b))\n"
        "class Od(collections.OrderedDict):\n    pass\n"
        "class Level(int, enum.Enum):\n    LOW = 1\n    def __new__(cls, v):\n        obj = int.__new__(cls, v)\n"
        "        obj._value_ = v\n        return obj\n"
        "class Shape(abc.ABC):\n    @abc.abstractclassmethod\n    def unit(cls):\n        ...\n"
        "    @abc.abstractstaticmethod\n    def kind():\n        ...\n"
        "class Sq(Shape):\n    @classmethod\n    def unit(cls):\n        return cls.__name__\n"
        "    @staticmethod\n    def kind():\n        return 'square'\n"
        "try:\n    Shape()\n    abstract = False\nexcept TypeError:\n    abstract = True\n"
        "class Mine(abc.abstractclassmethod):\n    pass\n"
        "print(Single() is Single(), Meters(-2), Tag('a'), Pair(1, 2), dict.__new__(Od) == {}, Level(1).name,"
        " Sq.unit(), Sq().kind(), abstract, isinstance(Mine(lambda c: 1), abc.abstractclassmethod),"
        " copy.deepcopy([Level.LOW]), copy.copy(Level.LOW) is Level.LOW)"
    )
    assert res.error is None, res.error
    assert res.stdout == "True 2.0 A (1, 2) True LOW Sq square True True [<Level.LOW: 1>] True\n"
