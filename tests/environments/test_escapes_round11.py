"""Escape corpus, eleventh review: methods read unbound off a class of the sandbox, and a denied dict.

Same conventions as ``test_escapes.py`` (its helpers and fixtures come from ``_escape_helpers``).

- The worst: the methods dataclasses generates are exec'd from source in the placeholder module, so
  they count as the sandbox's own (``_sandbox_function``), but their bodies never went through the
  rewrite: ``self.<field> = <arg>`` is a native write. Read off the class, ``A.__init__`` took any
  ``self``: ``@dataclass class W: _field_assign: object`` and ``W.__init__(dataclasses, f)`` replaced
  ``dataclasses._field_assign`` in the worker's real module (``json.dumps`` the same way), and the
  next dataclass's generated ``__init__`` ran ``f``'s source line natively, past every guard:
  ``().__class__.__base__.__subclasses__()`` to ``os._wrap_close.__init__.__globals__['environ']``,
  the real ``os`` (files, processes where the OS layers are absent). ``A.__repr__(random)`` read a
  host module's private ``_os`` the same way. A dunder method read unbound off a class of the sandbox
  that was not compiled from a cell is now handed out checking ``self`` (next item).

- A dunder read off a class of the sandbox is allowed (its own special methods), and what it finds
  may be inherited from a host base class, unbound: for Python functions ``_checked_method`` checks
  ``self`` against the host class, but a C slot method (``wrapper_descriptor``, ``method_descriptor``)
  took any instance of that host class. ``class M(type(json)): pass`` made ``M.__init__`` the real
  ``module.__init__``: ``M.__init__(json, 'repl')`` renamed a host module (its ``__spec__`` and
  ``__loader__`` cleared), and named ``repl`` its functions counted as the sandbox's own (writable,
  their class methods handed out unchecked). ``class P(property): pass`` gave ``property.__init__``,
  which re-made any host property with the model's accessors (``Fraction.numerator`` answered a
  model lambda in the whole worker), and ``property.__set__`` / ``__get__``, which call a host
  property's accessors on any object (``Calendar.firstweekday``'s setter wrote ``_firstweekday`` into
  a module: round 9's finding by another door). ``super(P, P)`` reads them unbound too, and so did
  ``A.__new__`` (``object.__new__`` of any class, past its ``__init__``). Such a read now hands out the
  method checking ``self`` against the class of the sandbox it was read off (``__new__``: the class
  argument a subclass of it), as a read off an instance binds it; dataclasses' native read of a
  field's default is refused where it would find one.
- ``copy.dispatch_table`` (copyreg's global table) is denied by name, and by identity in ``_vet``,
  but ``_vet`` let every exact dict through before looking: ``type(list[int])(copy, ()).dispatch_table``
  (a GenericAlias forwards reads to its origin; typing's aliases too) was the real table, and a
  reductor the model put there ran on every copy of that type in the worker, the policy's own copies
  of a cell's AST nodes while it checks a later cell included. A dict is now looked up first.
- Low: typing refuses subclasses of its special classes (``TypeVar``, ``ForwardRef``, the aliases)
  unless ``_root=True`` is passed; the class statement's keywords may not be private, but an own
  base's ``__init_subclass__`` passed it on (``super().__init_subclass__(_root=True)``). Nothing was
  found to follow from it; such bases are refused by the class statement now.

Probed and found contained (kept below as regression tests): ``except*`` (refused), ``operator.call``,
``functools.partial`` over ``print`` (its ``func`` is a bound method of the print collector, with
nothing readable), ``json.JSONDecoder().scan_once`` attributes, ``A.__new__`` of a module type, the
host-function attributes and classes reached by ``type()`` of module-level instances.
Not fixed (low, noted): a typing alias or ``GenericAlias`` call sets ``__orig_class__`` on whatever its
origin returns (a class of the sandbox whose ``__new__`` returns a host module writes that one name
there); nothing reads it.
"""

from __future__ import annotations

import pytest
from _escape_helpers import LEAK_ONLY, WIN, assert_healthy, attack, check_refused

_PROP = "class P(property):\n    pass\n"
_MOD = "import json\nclass M(type(json)):\n    pass\n"

_DC_LINE = ("self.env=[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == '_wrap_close'][0]"
            ".__init__.__globals__['environ']")

ROUND11 = [
    # the worst: a dataclass's generated __init__ (exec'd natively, yet the sandbox's own) on a module
    attack("review11", "dataclass_init_on_a_module_replaces_a_function_real_os_environ",
           "import dataclasses\n@dataclasses.dataclass\nclass W:\n    _field_assign: object\n"
           f"line = {_DC_LINE!r}\n"
           "W.__init__(dataclasses, lambda frozen, name, value, self_name: line)\n"
           "@dataclasses.dataclass\nclass V:\n    x: int = 0\nenv = V().env\nprint(env)\n"
           "if type(env).__name__ == '_Environ':\n    " + WIN, errors=("TypeError",)),
    attack("review11", "dataclass_init_on_a_module_writes_any_name",
           "import dataclasses, json\n@dataclasses.dataclass\nclass A:\n    dumps: object\n"
           "A.__init__(json, lambda *a, **k: 'HIJACKED')\nif json.dumps([1]) == 'HIJACKED':\n    " + WIN,
           errors=("TypeError",)),
    attack("review11", "dataclass_init_through_super_over_the_class",
           "import dataclasses, json\n@dataclasses.dataclass\nclass A:\n    dumps: object\n"
           "class B(A):\n    pass\nsuper(B, B).__init__(json, print)\n" + WIN, errors=("TypeError",)),
    attack("review11", "dataclass_repr_reads_a_host_private",
           "import dataclasses, random\n@dataclasses.dataclass\nclass A:\n    _os: object\n"
           "if 'module' in A.__repr__(random):\n    " + WIN, errors=("TypeError",)),
    attack("review11", "module_init_off_an_own_subclass_renames_a_host_module",
           _MOD + "M.__init__(json, 'zzz')\nif json.__name__ == 'zzz':\n    " + WIN, errors=("TypeError",)),
    attack("review11", "module_init_names_a_host_module_the_sandbox",
           _MOD + "M.__init__(json, 'repl')\njson.dumps.planted = 1\n" + WIN, errors=("TypeError",)),
    attack("review11", "module_init_through_super_over_the_class",
           _MOD + "super(M, M).__init__(json, 'zzz')\n" + WIN, errors=("TypeError",)),
    attack("review11", "property_init_re_makes_a_host_property",
           "import fractions\n" + _PROP + "P.__init__(fractions.Fraction.numerator, lambda s: 'HOOKED')\n"
           "if fractions.Fraction(3, 4).numerator == 'HOOKED':\n    " + WIN, errors=("TypeError",)),
    attack("review11", "property_set_calls_a_host_setter_on_a_module",
           "import calendar, typing\n" + _PROP + "P.__set__(calendar.Calendar.firstweekday, typing, 3)\n"
           "if P.__get__(calendar.Calendar.firstweekday, typing) == 3:\n    " + WIN, errors=("TypeError",)),
    attack("review11", "property_get_calls_a_host_getter_on_any_object",
           "import statistics\n" + _PROP + "class O:\n    _mu = 'x'\n"
           "P.__get__(statistics.NormalDist.mean, O())\n" + WIN, errors=("TypeError",)),
    attack("review11", "property_set_through_super_over_the_class",
           "import calendar, typing\n" + _PROP + "super(P, P).__set__(calendar.Calendar.firstweekday, typing, 3)\n"
           + WIN, errors=("TypeError",)),
    attack("review11", "object_new_off_an_own_class_makes_any_instance",
           "import json\nclass A:\n    pass\nx = A.__new__(json.JSONEncoder)\n" + WIN, errors=("TypeError",)),
    attack("review11", "dataclass_default_is_an_inherited_slot_method",
           "import dataclasses, json\nclass M(type(json)):\n    __init__: int\n"
           "M = dataclasses.dataclass(init=False, repr=False, eq=False, match_args=False)(M)\n"
           "f = dataclasses.fields(M)[0].default\nf(json, 'zzz')\n" + WIN),
    attack("review11", "generic_alias_forwards_to_copyreg_dispatch_table",
           "import copy\nt = type(list[int])(copy, ()).dispatch_table\nt[bytearray] = lambda x: (bytearray, ())\n"
           + WIN),
    attack("review11", "typing_alias_forwards_to_copyreg_dispatch_table",
           "import copy, typing\nt = type(typing.List[int])(copy, (), name='x').dispatch_table\n" + WIN),
    attack("review11", "typing_special_class_subclassed_by_passing_root_on",
           "import typing\nclass Base:\n    def __init_subclass__(cls, **kw):\n"
           "        super().__init_subclass__(_root=True)\nclass X(Base, typing.TypeVar):\n    pass\n" + WIN),
    attack("review11", "typing_forward_ref_subclassed_by_passing_root_on",
           "import typing\nclass Base:\n    def __init_subclass__(cls, **kw):\n"
           "        super().__init_subclass__(_root=True)\nclass X(Base, typing.ForwardRef):\n    pass\n" + WIN),
]

# Probed and contained: kept so they stay so. LEAK_ONLY where ordinary code may run.
CONTAINED = [
    attack("review11", "except_star_is_refused",
           "try:\n    raise ValueError(1)\nexcept* ValueError as eg:\n    g = eg\n" + WIN),
    attack("review11", "partial_over_print_holds_nothing_readable",
           "import functools\np = functools.partial(print, 1)\np.func.__self__\n" + WIN),
    attack("review11", "operator_call_is_a_plain_call",
           "import operator\nif operator.call(getattr, 1, 'real') != 1:\n    " + WIN, errors=LEAK_ONLY),
    attack("review11", "json_scanner_attributes_are_plain",
           "import json\ns = json.JSONDecoder().scan_once\nfor v in (s.object_hook, s.parse_float, s.strict):\n"
           "    if type(v).__name__ in ('module', 'frame', 'dict'):\n        " + WIN, errors=LEAK_ONLY),
    attack("review11", "classmethod_init_off_an_own_subclass_takes_own_objects_only",
           "class C(classmethod):\n    pass\nc = classmethod(len)\nC.__init__(c, print)\n" + WIN,
           errors=("TypeError",)),
    attack("review11", "new_of_a_module_type_off_an_own_class",
           "import json\nclass A:\n    pass\nA.__new__(type(json))\n" + WIN, errors=("TypeError",)),
]


@pytest.mark.parametrize("a", ROUND11)
def test_round11_findings_are_refused(fresh, a):
    check_refused(fresh, a, fresh.execute(a.code))


@pytest.mark.parametrize("a", CONTAINED)
def test_round11_probes_stay_contained(fresh, a):
    check_refused(fresh, a, fresh.execute(a.code))


def test_host_objects_keep_their_state_after_the_attempts(repl):
    for a in ROUND11:
        repl.execute(a.values[0].code)
    res = repl.execute("import json, fractions, calendar, typing, copy\n"
                       "print(json.__name__, fractions.Fraction(3, 4).numerator, hasattr(typing, 'firstweekday'),"
                       " copy.copy(bytearray(b'a')), json.dumps([1]))")
    assert res.error is None, res.error
    assert res.stdout == "json 3 False bytearray(b'a') [1]\n"
    assert_healthy(repl)


def test_inherited_special_methods_still_work_on_own_objects(repl):
    res = repl.execute(
        "import json, enum, collections\n"
        "class M(type(json)):\n    pass\nm = M('a')\nM.__init__(m, 'b')\n"
        "class P(property):\n    pass\nclass H:\n    def _get(self):\n        return 7\n    x = P(_get)\n"
        "h = H()\np = H.x\nP.__init__(p, lambda s: 8)\n"
        "class D(dict):\n    pass\nclass E(D):\n    def __init__(self):\n        D.__init__(self, a=1)\n"
        "        D.__setitem__(self, 'b', 2)\n"
        "class T(tuple):\n    def __new__(cls, x):\n        return super().__new__(cls, x)\n"
        "class U(T):\n    def __new__(cls, x):\n        return T.__new__(cls, x)\n"
        "class Q:\n    pass\n"
        "class C(enum.Enum):\n    a = 1\n"
        "class O(collections.OrderedDict):\n    pass\no = O()\nO.__setitem__(o, 'k', 1)\n"
        "print(m.__name__, P.__get__(p, h), super(P, P).__get__(p, h), h.x, E(), U([1]), T.__new__(U, [2]),"
        " type(Q.__new__(Q)).__name__, C.__new__(C, 1), dict(o), M.__repr__(m), T.__len__(U([1, 2])))"
    )
    assert res.error is None, res.error
    assert res.stdout == ("b 8 8 8 {'a': 1, 'b': 2} (1,) (2,) Q C.a {'k': 1} <module 'b'> 2\n")


def test_dataclass_methods_still_work_unbound_on_own_instances(repl):
    res = repl.execute(
        "import dataclasses\n@dataclasses.dataclass\nclass A:\n    x: int\n    y: int = 2\n"
        "@dataclasses.dataclass\nclass B(A):\n    z: int = 3\n    def __init__(self):\n"
        "        A.__init__(self, 1)\n        super(A, self).__init__()\n        self.z = 9\n"
        "@dataclasses.dataclass(order=True, frozen=True)\nclass F:\n    a: int = 0\n"
        "print(B(), A.__eq__(A(1), A(1)), A.__repr__(B()), F.__lt__(F(1), F(2)), hash(F(1)) == F.__hash__(F(1)))"
    )
    assert res.error is None, res.error
    assert res.stdout == "B(x=1, y=2, z=9) True B(x=1, y=2) True True\n"


def test_plain_dicts_are_still_handed_out_as_they_are(repl):
    res = repl.execute(
        "import typing, decimal, collections\n"
        "class A:\n    pass\na = A()\na.d = {'x': 1}\nd = a.d\n"
        "print(d is a.d, type(list[int])(a, ()).d is d, collections.ChainMap(d).maps[0] is d,"
        " typing.Generic.__name__)"
    )
    assert res.error is None, res.error
    assert res.stdout == "True True True Generic\n"
