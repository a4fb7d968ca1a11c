"""Escape corpus, thirteenth review: host C code that passes on what the sandbox chose, and ``__new__``
read off an instance.

Same conventions as ``test_escapes.py`` (its helpers and fixtures come from ``_escape_helpers``).

- The worst: in this Python (3.9 to 3.12) ``classmethod.__get__(instance, owner)`` calls the wrapped
  object's own ``__get__(owner, owner)`` when it has one. ``class C(classmethod): pass`` is allowed and
  ``__get__`` is readable on its instances (an own object's special method), so
  ``C(d).__get__(None, x)`` ran any host descriptor's ``__get__`` on any object ``x``. With a
  ``functools.cached_property`` of the sandbox (its own class body names it, ``H.repr`` hands it out),
  that is ``x.__dict__['repr'] = f(x)`` for any ``x`` lacking the name: a module's globals. A name there
  shadows the builtin for the module's code: with ``repr`` in dataclasses, the model's function wrote
  the source of every frozen dataclass's ``__setattr__`` (``name in (<repr of each field>,)``), which
  dataclasses exec's natively: ``().__class__.__base__.__subclasses__()`` to the real ``os.environ``.
  With a host property the same call was its getter on any object (``NormalDist.mean`` read ``_mu``:
  round 11's ``property.__get__`` by another door). ``__get__`` read off an own classmethod subclass
  (bound, unbound off the class, through ``super()``) is now handed out checking the chain as CPython
  follows it (a classmethod inside, own or not, passes the object on natively: ``C(C(d))``): ``owner``
  a class of the sandbox (what a native ``A.m`` does), or the chain ending in a function, an object
  without ``__get__`` or one whose ``__get__`` the sandbox wrote. ``@classmethod @property`` and plain
  classmethod subclasses keep working.
- ``__new__`` is a static method and ``object.__new__`` a builtin: neither binds when read off an
  instance. Round 11 checked ``A.__new__`` read off an own class, but ``A().__new__`` and
  ``super().__new__`` in an ordinary method were still the real ``object.__new__``: an instance of any
  class past its ``__init__`` (``json.JSONEncoder``). Read off an own instance (or a ``super()`` bound
  to one) it is now checked against the instance's class, as off the class.

Probed and found contained (kept below): ``AttributeError.obj`` of a failed read (vetted like any
read; ``print(flush=True)`` hands out the cell's print collector, which holds nothing of the host),
a ``staticmethod`` subclass's ``__get__`` (it returns the wrapped object, calls nothing),
``functools.partialmethod`` over a host property in an own class (its getter gets the own instance),
a dataclass field named ``__get__`` on a classmethod subclass, a ``GenericAlias`` call over a
lambda that returns a host module (``__orig_class__`` stays unreadable).
Not fixed (low, noted): a ``typing.Protocol`` marked runtime-checkable tells, through ``isinstance``,
whether a host object has a private attribute (one bit, nothing read out); ``classmethod(prop)`` of a
host property in an own class runs its getter on the own class (native ``A.m``), which may inherit
the private name the getter reads from a host base (the getters of allowed modules read ``_mu``,
``_firstweekday``, ``_name_`` and the like).
"""

from __future__ import annotations

import pytest
from _escape_helpers import LEAK_ONLY, WIN, assert_healthy, attack, check_refused

_CM = "class C(classmethod):\n    pass\n"
_EVIL_REPR = ("self.__dict__.setdefault('env', [c for c in ().__class__.__base__.__subclasses__() "
              "if c.__name__ == '_wrap_close'][0].__init__.__globals__['environ'])")

ROUND13 = [
    # the worst: a cached_property's __get__ on a module, through classmethod's chaining
    attack("review13", "classmethod_chain_puts_repr_into_dataclasses_real_os_environ",
           "import dataclasses, functools\n"
           f"evil = {_EVIL_REPR!r}\n"
           "class H:\n    repr = functools.cached_property(lambda self: (lambda name: evil))\n" + _CM +
           "C(H.repr).__get__(None, dataclasses)\n"
           "@dataclasses.dataclass(frozen=True)\nclass F:\n    x: int = 0\nclass G(F):\n    pass\n"
           "g = G()\ntry:\n    g.y = 1\nexcept Exception:\n    pass\nenv = g.env\nprint(env)\n"
           "if type(env).__name__ == '_Environ':\n    " + WIN),
    attack("review13", "classmethod_chain_writes_a_new_global_into_a_module",
           "import functools, json\nclass H:\n    planted = functools.cached_property(lambda self: 7)\n" + _CM +
           "C(H.planted).__get__(None, json)\nif json.planted == 7:\n    " + WIN),
    attack("review13", "classmethod_chain_unbound_off_the_own_class",
           "import functools, json\nclass H:\n    planted = functools.cached_property(lambda self: 7)\n" + _CM +
           "C.__get__(C(H.planted), None, json)\nif json.planted == 7:\n    " + WIN),
    attack("review13", "classmethod_chain_through_super_over_the_class",
           "import functools, json\nclass H:\n    planted = functools.cached_property(lambda self: 7)\n" + _CM +
           "super(C, C).__get__(C(H.planted), None, json)\nif json.planted == 7:\n    " + WIN),
    attack("review13", "classmethod_chain_through_super_in_a_method",
           "import functools, json\nclass H:\n    planted = functools.cached_property(lambda self: 7)\n" + _CM +
           "class D(C):\n    def plant(self, target):\n        return super().__get__(None, target)\n"
           "D(H.planted).plant(json)\nif json.planted == 7:\n    " + WIN),
    attack("review13", "classmethod_chain_through_an_own_classmethod_in_it",
           "import functools, json\nclass H:\n    planted = functools.cached_property(lambda self: 7)\n" + _CM +
           "C(C(H.planted)).__get__(None, json)\nif json.planted == 7:\n    " + WIN),
    attack("review13", "classmethod_chain_through_a_plain_classmethod_in_it",
           "import functools, json\nclass H:\n    planted = functools.cached_property(lambda self: 7)\n" + _CM +
           "C(classmethod(H.planted)).__get__(None, json)\nif json.planted == 7:\n    " + WIN),
    attack("review13", "classmethod_chain_runs_a_host_property_getter_on_any_object",
           "import statistics\n" + _CM + "class O:\n    _mu = 'x'\n"
           "if C(statistics.NormalDist.mean).__get__(None, O()) == 'x':\n    " + WIN),
    # __new__ read off an instance: the real object.__new__
    attack("review13", "object_new_off_an_own_instance_makes_any_instance",
           "import json\nclass A:\n    pass\nx = A().__new__(json.JSONEncoder)\n" + WIN, errors=("TypeError",)),
    attack("review13", "object_new_through_super_in_a_method",
           "import json\nclass A:\n    def make(self, cls):\n        return super().__new__(cls)\n"
           "x = A().make(json.JSONEncoder)\n" + WIN, errors=("TypeError",)),
    attack("review13", "object_new_through_super_over_an_instance",
           "import json\nclass A:\n    pass\nclass B(A):\n    pass\n"
           "x = super(B, B()).__new__(json.JSONEncoder)\n" + WIN,
           errors=("TypeError",)),
    attack("review13", "fraction_new_off_an_own_instance",
           "import fractions\nclass F(fractions.Fraction):\n    pass\nx = F(1).__new__(fractions.Fraction, 3)\n" + WIN,
           errors=("TypeError",)),
]

# Probed and contained: kept so they stay so. LEAK_ONLY where ordinary code may run.
CONTAINED = [
    attack("review13", "attribute_error_obj_is_vetted",
           "import typing\ntry:\n    typing.Type.nope\nexcept AttributeError as e:\n    m = e.obj\n" + WIN),
    attack("review13", "attribute_error_obj_of_print_flush_holds_nothing_of_the_host",
           "try:\n    print('x', flush=True)\nexcept AttributeError as e:\n    o = e.obj\n"
           "for v in (o, o.kept, o.kept.parts, type(o)):\n"
           "    if type(v).__name__ in ('module', 'frame', 'CappedOutput', 'Worker', 'Channel'):\n        " + WIN,
           errors=LEAK_ONLY),
    attack("review13", "staticmethod_subclass_get_calls_nothing",
           "import functools, json\nclass H:\n    planted = functools.cached_property(lambda self: 7)\n"
           "class S(staticmethod):\n    pass\nS(H.planted).__get__(None, json)\n"
           "if hasattr(json, 'planted'):\n    " + WIN, errors=LEAK_ONLY),
    attack("review13", "partialmethod_over_a_host_property_gets_the_own_instance",
           "import functools, fractions\nclass A:\n    m = functools.partialmethod(fractions.Fraction.numerator)\n"
           "A().m\n" + WIN, errors=("AttributeError",)),
    attack("review13", "dataclass_field_named_get_on_a_classmethod_subclass",
           "import dataclasses\n@dataclasses.dataclass\nclass D(classmethod):\n    __get__: int\n" + WIN),
    attack("review13", "generic_alias_over_a_lambda_writes_only_orig_class",
           "import json\ng = type(list[int])(lambda: json, ())\ng()\ngetattr(json, '__orig_' + 'class__')\n" + WIN),
]


@pytest.mark.parametrize("a", ROUND13)
def test_round13_findings_are_refused(fresh, a):
    check_refused(fresh, a, fresh.execute(a.code))


@pytest.mark.parametrize("a", CONTAINED)
def test_round13_probes_stay_contained(fresh, a):
    check_refused(fresh, a, fresh.execute(a.code))


def test_host_modules_keep_their_globals_after_the_attempts(repl):
    for a in ROUND13:
        repl.execute(a.values[0].code)
    res = repl.execute(
        "import json, dataclasses\n@dataclasses.dataclass(frozen=True)\nclass F:\n    x: int = 0\n"
        "class G(F):\n    pass\ng = G()\ng.y = 1\n"
        "print(hasattr(json, 'planted'), hasattr(dataclasses, 'repr'), hasattr(g, 'env'), g.y, F(2), json.dumps([1]))")
    assert res.error is None, res.error
    assert res.stdout == "False False False 1 F(x=2) [1]\n"
    assert_healthy(repl)


def test_classmethods_still_work(repl):
    res = repl.execute(
        "class A:\n    @classmethod\n    @property\n    def kind(cls):\n        return cls.__name__.lower()\n"
        "    @classmethod\n    def make(cls, v):\n        return (cls.__name__, v)\n"
        "class B(A):\n    pass\n"
        "class C(classmethod):\n    pass\n"
        "class Reg:\n    build = C(lambda cls, v: (cls.__name__, v))\n"
        "class Sub(Reg):\n    pass\n"
        "c = C(lambda cls: cls.__name__)\n"
        "class D:\n    pass\n"
        "class G:\n    def __get__(self, instance, owner=None):\n        return ('own', owner)\n"
        "print(A.kind, B.kind, B().kind, A.make(1), B().make(2), Reg.build(3), Sub().build(4),"
        " c.__get__(None, D)(), c.__get__(D())(), C.__get__(c, None, Sub)(), super(C, c).__get__(None, D)(),"
        " C(G()).__get__(None, 5), C(C(lambda cls: 6)).__get__(None, D)())"
    )
    assert res.error is None, res.error
    assert res.stdout == ("a b b ('A', 1) ('B', 2) ('Reg', 3) ('Sub', 4) D D Sub D ('own', 5) 6\n")


def test_new_read_off_own_instances_still_works(repl):
    res = repl.execute(
        "import copy, fractions\n"
        "class P:\n    def __init__(self, v=0):\n        self.v = v\n"
        "    def blank(self):\n        return self.__new__(type(self))\n"
        "    def clone(self):\n        o = super().__new__(type(self))\n        o.v = self.v\n        return o\n"
        "class Q(P):\n    pass\n"
        "class F(fractions.Fraction):\n    pass\n"
        "q = Q(3)\nf = F(1, 2)\n"
        "print(type(q.blank()).__name__, q.clone().v, type(P().__new__(Q)).__name__, f.__new__(F, 3, 4),"
        " type(f.__new__(F, 1)).__name__, copy.copy(q).v, copy.deepcopy(f))"
    )
    assert res.error is None, res.error
    assert res.stdout == "Q 3 Q 3/4 F 3 1/2\n"
