"""Escape corpus, sixteenth review: what the public callables of the allowed modules return, and what
unpacking hands out of host containers.

Same conventions as ``test_escapes.py`` (its helpers and fixtures come from ``_escape_helpers``).

- The worst: ``time.pthread_getcpuclockid(t)`` hands ``t`` to glibc as a ``struct pthread *`` and reads
  its ``tid`` field (the clock id it returns is ``~tid << 3 | 2``; a ``tid`` not above zero answers
  ``ESRCH``). With ``id()`` giving addresses, ``time.pthread_getcpuclockid(id(b) + 32 - 0x2d0)`` (glibc
  2.36 on x86-64) read 4 bytes of the worker's memory anywhere (29 bits of them, shifting by one byte
  gives the rest): the data of any object, past every guard. A bad address was a SIGSEGV of the worker
  (``time.pthread_getcpuclockid(1)``: restarted, the model's variables lost). Refused now
  (``_DENIED_MODULE_ATTRS['time']``), as are ``time.clock_settime`` / ``clock_settime_ns``, which set the
  host's clock and were stopped only by the dropped privileges (``PermissionError`` as an unprivileged
  worker). These names exist on Linux only: the identity tables skip a name the platform lacks.

Probed and found contained (kept below): the public callables of every allowed module and of their
public classes (instances made with simple arguments), called with simple arguments, return nothing
the guards would deny or replace (the real builtins, modules outside the allowlist, module globals,
frames, code, tracebacks, ``type``, host methods unbound), however deep the result is unpacked; the
public attributes of the allowed modules, followed through containers (what unpacking and ``for``
read without a guard) seven levels deep, hold none either (both checked by a script in the review, not
kept: it calls every function). ``calendar.main`` and ``base64.main`` (command-line tools: argparse,
``getopt``, ``open`` of a name from ``sys.argv``) import modules the worker can no longer read after it
drops its privileges; ``shlex.split(None)`` reads the worker's stdin, which is ``/dev/null``;
``copy.deepcopy`` of a host bound method with a model memo (the copy of ``random._inst`` is refused
before the memo gets anything); ``itertools.starmap`` / ``functools.partial`` over ``getattr`` (the
sandbox's own); unpacking ``enum.pickle_by_global_name`` (a name), ``**E.__members__``, the flags of a
decimal context (host classes: ``type()`` of one is the stand-in); ``json`` object hooks (plain dicts).
"""

from __future__ import annotations

import pytest
from _escape_helpers import ANY_ERROR, LEAK_ONLY, POLICY, WIN, assert_healthy, attack, check_refused

# 4 bytes of the worker's memory at addr, by glibc reading a `struct pthread`'s tid (offset 0x2d0 there)
_PEEK = ("import time\nb = b'SECRETXY'\n"
         "def peek(addr):\n    c = {fn}(addr - 0x2d0)\n    return ((~(c >> 3)) & 0x1fffffff).to_bytes(4, 'little')\n"
         "if peek(id(b) + 32)[:3] == b'SEC':\n    ")

ROUND16 = [
    # the worst: an arbitrary read of the worker's memory
    attack("review16", "pthread_getcpuclockid_reads_the_workers_memory",
           _PEEK.format(fn="time.pthread_getcpuclockid") + WIN),
    attack("review16", "pthread_getcpuclockid_by_getattr",
           _PEEK.format(fn="getattr(time, 'pthread_' + 'getcpuclockid')") + WIN),
    attack("review16", "pthread_getcpuclockid_from_import",
           "from time import pthread_getcpuclockid\n" + _PEEK.format(fn="pthread_getcpuclockid") + WIN,
           errors=("ImportError", *POLICY)),
    attack("review16", "pthread_getcpuclockid_segfaults_the_worker",
           "import time\ntime.pthread_getcpuclockid(1)\n" + WIN),
    # the host's clock, stopped only by the OS layer before
    attack("review16", "clock_settime_sets_the_hosts_clock",
           "import time\ntime.clock_settime(time.CLOCK_REALTIME, time.time() + 3600)\n" + WIN),
    attack("review16", "clock_settime_ns_sets_the_hosts_clock",
           "import time\ntime.clock_settime_ns(time.CLOCK_REALTIME, time.time_ns())\n" + WIN),
]

# Probed and contained: kept so they stay so. LEAK_ONLY where ordinary code may run.
CONTAINED = [
    attack("review16", "calendar_main_command_line_tool",
           "import calendar\ncalendar.main(['cal', '-L', 'C', '-e', 'utf-8', '-t', 'html', '2024'])\n" + WIN,
           errors=ANY_ERROR),
    attack("review16", "base64_main_opens_a_name_from_argv", "import base64\nbase64.main()\n" + WIN,
           errors=ANY_ERROR),
    attack("review16", "shlex_split_none_reads_the_workers_stdin",
           "import shlex\nif shlex.split(None):\n    " + WIN, errors=LEAK_ONLY),
    attack("review16", "deepcopy_of_a_host_bound_method_into_a_model_memo",
           "import copy, random\nmemo = {}\ntry:\n    copy.deepcopy(random.randint, memo)\nfinally:\n"
           "    for v in memo.values():\n        if type(v).__name__ == 'Random':\n            " + WIN),
    attack("review16", "starmap_over_getattr", "import itertools\nlist(itertools.starmap(getattr, [((), '__cl' "
           "'ass__')]))\n" + WIN),
    attack("review16", "partial_over_getattr", "import functools\nfunctools.partial(getattr, ())('__cl' 'ass__')\n"
           + WIN),
    attack("review16", "unpacking_pickle_by_global_name",
           "import enum\nclass E(enum.Enum):\n    A = 1\ng, *rest = enum.pickle_by_global_name(E.A, 2)\n"
           "if callable(g) or rest:\n    " + WIN, errors=LEAK_ONLY),
    attack("review16", "double_star_of_members", "import enum\nclass E(enum.Enum):\n    A = 1\n"
           "def f(**kw):\n    return kw\nfor k, v in f(**E.__members__).items():\n"
           "    if type(v) is not E:\n        " + WIN, errors=LEAK_ONLY),
    attack("review16", "decimal_flags_unpacked_are_host_classes_behind_type",
           "import decimal\nwith decimal.localcontext() as c:\n    a, *b = c.flags\n"
           "t = type(a)\nt('X', (), {})\n" + WIN),
    attack("review16", "json_hooks_get_plain_data",
           "import json\nseen = []\njson.loads('{\"a\": [1, {\"b\": 2}]}', object_pairs_hook=lambda p: seen.append(p) "
           "or dict(p), parse_int=lambda s: seen.append(s) or int(s))\n"
           "for x in seen:\n    if type(x) not in (list, str):\n        " + WIN, errors=LEAK_ONLY),
]


@pytest.mark.parametrize("a", ROUND16)
def test_round16_findings_are_refused(fresh, a):
    check_refused(fresh, a, fresh.execute(a.code))


@pytest.mark.parametrize("a", CONTAINED)
def test_round16_probes_stay_contained(fresh, a):
    check_refused(fresh, a, fresh.execute(a.code))


def test_host_modules_unchanged_after_the_attempts(repl):
    for a in ROUND16:
        res = repl.execute(a.values[0].code)
        assert not res.restarted, res.error
    res = repl.execute(
        "import time, json\nok = []\nfor name in ('pthread_getcpuclockid', 'clock_settime', 'clock_settime_ns'):\n"
        "    try:\n        getattr(time, name)\n    except SandboxPolicyError:\n        ok.append(name)\n"
        "print(json.__name__, len(ok), abs(time.time() - time.time()) < 60)")
    assert res.error is None, res.error
    assert res.stdout == "json 3 True\n"
    assert_healthy(repl)


def test_the_time_module_still_works(repl):
    res = repl.execute(
        "import time, datetime\nfrom time import perf_counter, monotonic, strftime, gmtime\n"
        "t0 = perf_counter()\ntime.sleep(0)\n"
        "print(perf_counter() >= t0, monotonic() > 0, time.clock_gettime(time.CLOCK_MONOTONIC) > 0,"
        " time.clock_getres(time.CLOCK_REALTIME) > 0, time.process_time() >= 0, time.thread_time() >= 0,"
        " strftime('%Y-%m-%d', gmtime(0)), time.get_clock_info('time').adjustable in (True, False),"
        " datetime.datetime.fromtimestamp(0, datetime.timezone.utc).year, hasattr(time, 'clock_settime'))")
    assert res.error is None, res.error
    assert res.stdout == "True True True True True True 1970-01-01 True 1970 False\n"
