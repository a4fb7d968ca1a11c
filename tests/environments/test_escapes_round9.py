"""Escape corpus, ninth review: values that reach model code as call results, not reads; host methods
with a foreign self; the parent's side of a host call.

Same conventions as ``test_escapes.py`` (its helpers and fixtures come from ``_escape_helpers``).

- ``typing.get_origin`` reads ``tp.__origin__`` natively and its result, a call's, is not vetted:
  ``typing.get_origin(typing.Type[int])`` was the real ``type``. Its three-argument call builds
  classes past ``_ClassStatement``: any base (``type(typing.List[int])`` with ``_root=True``, a
  typing alias forwarding every read to an origin of the caller's choice, counted as the sandbox's
  own: ``m._create_fn`` exec'd source under dataclasses' real globals, ``os.environ``), any dunder
  (``__getattribute__``, ``__del__``), ``PrettyPrinter`` subclasses holding the worker's stdout.
  ``get_origin`` and ``get_args`` are replaced by versions whose results are vetted as a read's
  (the metaclass ``type`` is refused).
- A host class's method read unbound (``calendar.Calendar.setfirstweekday``, ``Sub.__init__`` off a
  class of the sandbox deriving from a host class, a property's ``fget``/``fset``, a read through
  a typing alias) is a Python function, which unlike a C type's method takes any object as
  ``self``: ``UserDict.__init__(typing)`` and ``Calendar.setfirstweekday(typing, 3)`` wrote
  attributes of modules, ``re.Scanner.scan(re, ...)`` replaced the worker's ``re.match`` with a
  Match object, ``JSONEncoder.__init__(JSONEncoder, default=f)`` made a model function the default
  of every JSON encoder of the worker without its own. Nothing found led out from there, but
  guarded writes refuse all of it. Such methods are handed out checking ``self`` by its MRO, as
  C methods do; ``copy.deepcopy`` of a bound method (which rebinds it to the copy of its self, a
  model ``__deepcopy__``'s choice) must keep the self's type or give one of the sandbox's objects.
- A user tool's arguments are checked by ``loopagent.tools.to_plain``, which built the path of
  every item (``['key'][3]``) eagerly, for the error message it might need: a copy of all the
  keys above it per item. One 8 MB key over a list of 100,000 numbers (an 8 MB host call) held the
  parent's event loop for ~15 s (800 GB of copying); 30 MB over a million, hours, while the run's time limit
  could not fire. The path is built only when an error names it now.
- ``set_variable`` from a host function while its cell waited on it: the worker, waiting for the
  host's answer, raised "unexpected message" into the cell; the parent took the cell's result
  for the set's answer (the cell's output lost, the next answer sent to a worker no longer
  waiting). From an async host function (``aexecute``) the cell's thread held the lock the set
  waited for: a deadlock of the parent. A set made during a host call is served by the waiting
  worker now, without the lock, as ``get_variable`` (``FINAL_VAR``) always was; such requests and
  the end of the host call are serialised, so one from another thread is never left on the channel.
- A host function's error message went to the cell whole, and it may quote the arguments: a
  5 MB key of NUL characters became a 20 MB message (a JSON frame of 40 MB), several times the
  call that caused it. It is cut to the output limit (``max_output_chars``), all the model sees.
- Low: ``set_variable`` of a value nested too deeply raised ``RecursionError`` (documented:
  ``TypeError``), past the callers that catch what it documents (compaction's).
"""

from __future__ import annotations

import time

import pytest
from _escape_helpers import CREATE_FN_ENV, SECRET_VALUE, WIN, assert_healthy, attack, check_refused

from loopagent.environments import SandboxREPL
from loopagent.tools import Tool

_REAL_TYPE = "import typing\nt = typing.get_origin(typing.Type[int])\n"

ROUND9 = [
    attack("review9", "get_origin_hands_out_type_alias_subclass_forwards_privates",
           _REAL_TYPE + "import dataclasses\nG = t('G', (type(typing.List[int]),), {}, _root=True)\n"
           "m = G(dataclasses, (), name='x')\n" + CREATE_FN_ENV + WIN,
           forbid=(SECRET_VALUE,)),
    attack("review9", "get_origin_from_import_hands_out_type",
           "import typing\nfrom typing import get_origin\nt = get_origin(typing.Type)\n"
           "X = t('X', (), {'__getattribute__': lambda s, n: n})\n" + WIN),
    attack("review9", "get_origin_type_builds_pretty_printer_subclass",
           _REAL_TYPE + "import pprint\nP = t('P', (pprint.PrettyPrinter,), {})\nout = P()._stream\n" + WIN),
    attack("review9", "get_origin_type_builds_metaclass",
           _REAL_TYPE + "M = t('M', (t,), {})\n" + WIN),
    attack("review9", "get_origin_read_with_getattr",
           "import typing\nt = getattr(typing, 'get_origin')(typing.Type[int])\nt('X', (), {})\n" + WIN),
    # host methods read unbound take any self: module and host-class attributes written
    attack("review9", "unbound_host_method_writes_a_module_attribute",
           "import calendar, typing\ncalendar.Calendar.setfirstweekday(typing, 3)\nprint(typing.firstweekday)\n" + WIN,
           errors=("TypeError",)),
    attack("review9", "unbound_host_dunder_off_an_own_subclass_writes_a_module",
           "import collections, typing\nclass U(collections.UserDict):\n    pass\nU.__init__(typing)\n"
           "U.__setitem__(typing, 'k', 1)\nprint(typing.data)\n" + WIN, errors=("TypeError",)),
    attack("review9", "unbound_scanner_methods_replace_re_match",
           "import re\nclass S(re.Scanner):\n    pass\nS.__init__(re, [('a', lambda s, t: t)])\n"
           "re.Scanner.scan(re, 'a')\nprint(re.match)\n" + WIN, errors=("TypeError",)),
    attack("review9", "unbound_json_encoder_init_replaces_the_default_class_wide",
           "import json\nclass J(json.JSONEncoder):\n    pass\n"
           "J.__init__(json.JSONEncoder, default=lambda self, o: 'planted')\nprint(json.dumps(object()))\n" + WIN,
           errors=("TypeError",)),
    attack("review9", "property_setter_of_a_host_class_writes_a_module",
           "import calendar, typing\ncalendar.Calendar.firstweekday.fset(typing, 3)\n" + WIN, errors=("TypeError",)),
    attack("review9", "host_method_read_through_a_forwarding_alias",
           "import calendar, typing\nA = type(typing.List[int])(calendar.Calendar, (), name='x')\n"
           "A.setfirstweekday(typing, 3)\n" + WIN, errors=("TypeError",)),
    attack("review9", "deepcopy_rebinds_a_host_method_to_any_self",
           "import copy, collections, typing\nclass U(collections.UserDict):\n"
           "    def __deepcopy__(self, memo):\n        return typing\n"
           "m = copy.deepcopy(U().__init__)\nm()\nprint(typing.data)\n" + WIN, errors=("Error",)),
]


@pytest.mark.parametrize("a", ROUND9)
def test_round9_findings_are_refused(fresh, a):
    check_refused(fresh, a, fresh.execute(a.code))


def test_host_modules_keep_their_attributes_after_the_attempts(repl):
    for a in ROUND9:
        repl.execute(a.values[0].code)
    res = repl.execute("import typing, re, json\n"
                       "planted = ((typing, 'firstweekday'), (typing, 'data'), (re, 'lexicon'))\n"
                       "print([hasattr(m, n) for m, n in planted], re.match('a', 'a') is not None,"
                       " json.JSONEncoder().encode([1]))")
    assert res.error is None, res.error
    assert res.stdout == "[False, False, False] True [1]\n"


def test_host_methods_still_work_on_their_own_instances(repl):
    res = repl.execute(
        "import calendar, collections, copy, re, string\n"
        "c = calendar.Calendar()\ncalendar.Calendar.setfirstweekday(c, 2)\n"
        "class U(collections.UserDict):\n    pass\nu = U()\nU.__init__(u, {'a': 1})\nU.__setitem__(u, 'b', 2)\n"
        "s = re.Scanner([('[a-z]+', lambda sc, t: t.upper()), (' ', None)])\n"
        "class T(string.Template):\n    delimiter = '%'\n"
        "v = copy.deepcopy(u.get)\n"
        "print(c.firstweekday, dict(u), re.Scanner.scan(s, 'ab cd')[0], string.Template.substitute(T('%x'), x=1),"
        " calendar.Calendar.firstweekday.fget(c), v('a'))"
    )
    assert res.error is None, res.error
    assert res.stdout == "2 {'a': 1, 'b': 2} ['AB', 'CD'] 1 2 1\n"


def test_get_origin_and_get_args_still_work(repl):
    res = repl.execute(
        "import typing\nfrom typing import get_origin, get_args\n"
        "print(get_origin(list[int]), typing.get_origin(typing.List[int]), get_origin(int),\n"
        "      get_args(typing.Callable[[int], str]), get_args(typing.Dict[str, int]), typing.get_args(int))"
    )
    assert res.error is None, res.error
    assert res.stdout == "<class 'list'> <class 'list'> None ([<class 'int'>], <class 'str'>) " \
                         "(<class 'str'>, <class 'int'>) ()\n"


def test_tool_arguments_with_a_long_key_over_many_items_are_checked_quickly(secret_env):
    seen = []

    def count(data):
        seen.append(len(data))
        return len(data)

    tool = Tool.of("count", count)

    async def host_count(*args, **kwargs):
        return await tool.invoke(args, kwargs)

    with SandboxREPL(timeout_s=30) as r:
        r.register("count", host_count)
        start = time.perf_counter()
        res = r.execute("print(count({'k' * 8_000_000: [0] * 100_000}))")
        took = time.perf_counter() - start
        assert res.error is None, res.error
        assert res.stdout == "1\n"
        assert took < 5, f"checking the arguments took {took:.1f} s"
        # the path is still named where an argument is not plain data
        res = r.execute("x = 0\nfor _ in range(70):\n    x = [x]\ncount({'a': [1, {'b': x}]})")
        path = "['a'][1]['b']" + "[0]" * 61
        assert res.error is not None and f"argument 1 of count(){path} nests deeper than 64" in res.error, res.error
        assert_healthy(r)


def test_set_variable_from_a_host_function_while_its_cell_waits(secret_env):
    with SandboxREPL(timeout_s=10) as r:

        def store(value):
            r.set_variable("stored", value)
            return "stored"

        r.register("store", store)
        res = r.execute("print(store([1, 2]))\nprint(stored)")
        # before: the worker took the request for the host's answer (RuntimeError in the cell), the
        # parent took the cell's result for the set's answer and the cell's output was lost
        assert res.error is None, res.error
        assert res.stdout == "stored\n[1, 2]\n"
        res = r.execute("store({'a': None})\nprint(stored)")
        assert res.error is None and res.stdout == "{'a': None}\n", res
        assert_healthy(r)


def test_set_variable_from_an_async_host_function_does_not_deadlock(secret_env):
    import asyncio

    with SandboxREPL(timeout_s=10) as r:

        async def store(value):
            # before: the cell's thread held the lock while it waited on this call: a deadlock
            await asyncio.to_thread(r.set_variable, "stored", value)
            r.set_variable("also", value + 1)
            return "stored"

        r.register("store", store)

        async def run():
            return await asyncio.wait_for(r.aexecute("print(store(3), stored, also)"), 20)

        res = asyncio.run(run())
        assert res.error is None, res.error
        assert res.stdout == "stored 3 4\n"
        # a reserved name is refused mid-call as it is outside one
        r.register("bad", lambda: r.set_variable("bad", 1))
        res = r.execute("bad()")
        assert res.error is not None and "reserved" in res.error, res.error
        assert_healthy(r)


def test_a_host_error_quoting_huge_arguments_reaches_the_cell_cut(secret_env):
    def strict(**kwargs):
        raise TypeError(f"unexpected arguments: {list(kwargs)!r}")

    with SandboxREPL(timeout_s=30, max_output_chars=1000) as r:
        r.register("strict", strict)
        res = r.execute("try:\n    strict(**{'\\x00' * 5_000_000: 1})\nexcept Exception as e:\n"
                        "    print(type(e).__name__, len(str(e)), str(e)[-60:])")
        assert res.error is None, res.error
        kind, size, tail = res.stdout.split(" ", 2)
        assert kind == "HostFunctionError" and int(size) < 1200, res.stdout
        assert "more characters of the message not shown]" in tail
        assert_healthy(r)


def test_set_variable_refuses_a_value_nested_too_deeply_with_type_error(repl):
    value: list = []
    for _ in range(100_000):
        value = [value]
    with pytest.raises(TypeError, match="nested too deeply"):
        repl.set_variable("deep", value)
    assert_healthy(repl)


def test_checked_methods_are_kept_for_host_classes_only():
    import calendar

    from loopagent.environments import _guards

    first = _guards._vet(calendar.Calendar.setfirstweekday)
    assert first is _guards._vet(calendar.Calendar.setfirstweekday)  # one stand-in per method: `is` holds
    assert first is not calendar.Calendar.setfirstweekday
    before = len(_guards._METHODS)
    for i in range(200):
        ns = {"__name__": _guards.SANDBOX_MODULE}
        exec(f"class A{i}:\n    def f(self):\n        return {i}\ng = lambda: 0", ns)
        assert _guards._vet(ns[f"A{i}"].f) is ns[f"A{i}"].f and _guards._vet(ns["g"]) is ns["g"]
    assert len(_guards._METHODS) == before  # the sandbox's functions are never kept (they would pile up)
