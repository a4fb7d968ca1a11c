"""Escape corpus, eighth review: classes the sandbox owns that were made past the class statement.

Same conventions as ``test_escapes.py`` (its helpers and fixtures are loaded from that file).

- The enum functional API (``Enum('E', names, type=X)``) builds the class with
  ``metacls.__new__``, past ``_ClassStatement`` and so past ``_check_base``; the hardened
  ``_create_`` sets ``module='repl'``, so the result is a class of the sandbox deriving from
  any class the model holds. ``type=type(list[int])`` made a sandbox-owned subclass of
  ``GenericAlias``; its ``_new_member_`` (``GenericAlias.__new__``, in the class's own dict,
  so readable as the sandbox's private) built one with ``dataclasses`` as origin, and every
  private read on it counted as the sandbox's own while the alias forwarded it:
  ``m._create_fn`` exec's source under dataclasses' real globals (real ``__import__``,
  ``os.environ``). ``type=super`` and ``type=pprint.PrettyPrinter`` (the worker's stdout in
  the instance dict, readable as an own ``__dict__``) went through the same hole. The mixin
  is checked with ``_check_base`` now.
- ``_private_allowed`` let a class of the sandbox read any private name its MRO lacks (as
  "missing, or its own"), but a class's attribute lookup goes on to the metaclass:
  ``E._convert_`` on an own ``class E(enum.Enum)`` was ``EnumType._convert_``, which turns the
  globals of any module in ``sys.modules`` into members (``builtins.eval``, ``open``: the real
  builtins). Names the metaclass has are refused on classes now.
"""

from __future__ import annotations

import pytest
from _escape_helpers import ANY_ERROR, CREATE_FN_ENV, SECRET_VALUE, WIN, attack, check_refused

ROUND8 = [
    attack("review8", "enum_functional_api_mixin_generic_alias_forwards_privates",
           "import enum, dataclasses\nE = enum.Enum('E', [], type=type(list[int]))\n"
           "m = E._new_member_(E, dataclasses, ())\n" + CREATE_FN_ENV + WIN,
           forbid=(SECRET_VALUE,)),
    # held before the fix too (int and GenericAlias layouts conflict), kept for coverage
    attack("review8", "int_enum_functional_api_mixin_generic_alias",
           "import enum, dataclasses\nE = enum.IntEnum('E', [], type=type(list[int]))\n"
           "m = E._new_member_(E, dataclasses, ())\n" + CREATE_FN_ENV + WIN,
           errors=ANY_ERROR, forbid=(SECRET_VALUE,)),
    attack("review8", "enum_functional_api_mixin_typing_alias",
           "import enum, typing, dataclasses\nE = enum.Enum('E', [], type=type(typing.List[int]))\n" + WIN),
    attack("review8", "enum_functional_api_mixin_super",
           "import enum\nE = enum.Enum('E', [('A', (object, object()))], type=super)\n" + WIN),
    attack("review8", "enum_functional_api_mixin_pretty_printer_holds_stdout",
           "import enum, pprint\nE = enum.Enum('E', [('A', ())], type=pprint.PrettyPrinter)\n"
           "out = E.A.__dict__['_stream']\n" + WIN),
    attack("review8", "enum_functional_api_mixin_field",
           "import enum, dataclasses\nE = enum.Enum('E', [], type=dataclasses.Field)\n" + WIN),
    # held before the fix too (enum refuses a metaclass mixin)
    attack("review8", "enum_functional_api_mixin_metaclass",
           "import enum\nE = enum.Enum('E', [], type=type(enum.Enum))\n" + WIN, errors=ANY_ERROR),
    *[attack("review8", f"metaclass_private_{name}_read_off_an_own_enum_class",
             f"import enum\nclass E(enum.{base}):\n    pass\n"
             "X = E._convert_('X', 'builtins', lambda n: n in ('eval', 'open'))\nev = X['eval'].value\n"
             "env = ev('__import__(\"os\").environ', {})\nprint(env)\nif 'PATH' in env:\n    " + WIN,
             forbid=(SECRET_VALUE,))
      for name, base in (("convert_enum", "Enum"), ("convert_int_enum", "IntEnum"), ("convert_flag", "Flag"))],
    attack("review8", "metaclass_private_read_with_getattr",
           "import enum\nclass E(enum.Enum):\n    A = 1\nc = getattr(E, '_convert_')\n" + WIN),
    # low: ABCMeta._dump_registry only prints the registry, but it is the metaclass's private
    attack("review8", "metaclass_private_read_off_an_own_abc",
           "import abc\nclass A(abc.ABC):\n    pass\nd = A._dump_registry\n" + WIN),
    # harmless before the fix (an instance's lookup skips the metaclass: no match, no error);
    # refused by the class pattern's check now
    attack("review8", "metaclass_private_via_match_args_of_an_own_enum",
           "import enum\nclass E(enum.Enum):\n    __match_args__ = ('_convert_',)\n    A = 1\n"
           "match E.A:\n    case E(c):\n        " + WIN, errors=ANY_ERROR),
]


@pytest.mark.parametrize("a", ROUND8)
def test_round8_findings_are_refused(fresh, a):
    check_refused(fresh, a, fresh.execute(a.code))


def test_functional_enums_with_ordinary_mixins_still_work(repl):
    res = repl.execute(
        "import enum, datetime, fractions\n"
        "A = enum.Enum('A', 'x y', type=int)\n"
        "B = enum.IntEnum('B', [('P', 3), ('Q', 4)])\n"
        "C = enum.Enum('C', {'U': 'u'}, type=str)\n"
        "D = enum.Enum('D', [('T', (2020, 1, 2))], type=datetime.date)\n"
        "class Base:\n    pass\n"
        "F = enum.Enum('F', [('K', ())], type=Base)\n"
        "G = enum.Flag('G', 'r w')\n"
        "print(A.x + A.y, B.Q * 2, C.U.upper(), D.T.year, F.K.name, (G.r | G.w).value, A(2).name)"
    )
    assert res.error is None, res.error
    assert res.stdout == "3 8 U 2020 K 3 y\n"


def test_own_privates_of_enum_and_abc_classes_still_read(repl):
    res = repl.execute(
        "import enum, abc\n"
        "class E(enum.Enum):\n    A = 1\n    B = 2\n"
        "    @classmethod\n    def _missing_(cls, value):\n        return cls.A\n"
        "    _ignore_ = ['tmp']\n"
        "class K(abc.ABC):\n    _tag = 't'\n    @classmethod\n    def _make(cls):\n        return cls._tag\n"
        "class L(K):\n    pass\n"
        "print(E(9), sorted(E._member_map_), E._value2member_map_[2], E.A._value_, E.B._name_, L._make(), L._tag)"
    )
    assert res.error is None, res.error
    assert res.stdout == "E.A ['A', 'B'] E.B 1 B t t\n"
