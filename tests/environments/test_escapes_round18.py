"""Escape corpus, eighteenth review: the same bug class as round 17 (model hooks run inside host C code that
keeps a stale size or pointer), in ``list`` and ``collections.OrderedDict``.

Same conventions as ``test_escapes.py`` (its helpers and fixtures come from ``_escape_helpers``).

- The worst: ``list``'s extended-slice store (``list_ass_subscript``, CPython 3.11.7) takes the slice's length
  from the list, then turns a value that is not a list or tuple into one, which runs the model's ``__iter__``
  (a generator, ``map`` of a model function); the hook shrinks the list (``del l[10:]``) and the items are
  swapped in at the old positions of the new, smaller buffer: object pointers written past it, what lies
  there read back as objects and released (a SIGSEGV of the worker: restarted, the model's variables lost;
  a controlled write of pointers into the heap). Reached by ``l[::2] = It()`` in a cell, ``operator.setitem``,
  ``super().__setitem__`` / ``L.__setitem__`` of an own list subclass and ``UserList.__setitem__`` (host code,
  ``self.data[i] = item``). Fixed by one store (``_guards._list_setitem``) that makes such a value a list
  first: ``guarded_write`` hands out a list as a ``_ListWriter`` whose stores go through it, a read of list's
  ``__setitem__`` gives it, and the worker's ``UserList.__setitem__`` uses it.
- The C ``OrderedDict`` looks a key up in the dict and then indexes its node table by the slot found; the
  lookup runs the model's ``__eq__`` for a stored key of the same hash, which clears the dict (the table
  freed): ``o.move_to_end(k)``, ``o.pop(k)``, ``del o[k]`` read a freed node (a SIGSEGV). The sandbox's
  ``collections.OrderedDict`` (and ``typing.OrderedDict``, whose call made a C one) is now collections'
  pure-Python class (``_guards._pure_ordered_dict``): its links are in a plain dict, whose lookup survives it.

How: a fuzzer ran ~110 operations of list / dict / set / deque / OrderedDict / heapq / bisect / itertools /
functools / json / struct / zlib / hashlib / re / array / bytearray / copy / statistics / random / csv /
difflib in plain ``python3`` subprocesses, with hooks (``__eq__``, ``__lt__``, ``__hash__``, ``__index__``,
``__iter__``, ``__length_hint__``, ``__repr__``, key functions, ``default``) that clear, shrink or regrow the
container operated on (36 MB bytearrays: a freed buffer is unmapped), exit code 139 marking a crash; the
two crashes were then reached from the sandbox.

- Round 17's own fix let an own ``bytes`` subclass through bytearray's searches unconverted: CPython takes
  any object with an ``__index__`` for an int, and ``B(b'z') in ba`` ran ``B.__index__`` on the stale buffer
  (a SIGSEGV). Only buffers whose type has no ``__index__`` pass as they are now (``_guards._exact_arg``).

Probed and found contained (kept below): ``bytearray[i] = v`` / ``ba[k:n:2] = ...`` / ``del ba[k:n:2]`` with a
resizing ``__index__`` (3.11.7 reloads the buffer, gh-91153); list's simple slice store, ``index`` /
``count`` / ``remove`` / ``in`` / ``insert`` / ``pop`` / ``*`` / ``*=`` / comparisons / ``sort(key=)`` /
``extend`` with a lying ``__length_hint__``; dict / set / frozenset / dict views with mutating ``__eq__`` /
``__hash__``; deque ``index`` / ``count`` / ``remove`` / ``in`` / comparisons / ``rotate`` / ``insert`` / items;
heapq ``heapify`` / ``heappop`` / ``heappush`` / ``heappushpop`` / ``heapreplace``; ``bisect`` with a clearing
``__lt__`` or key; ``groupby`` / ``tee`` re-entered; ``functools.reduce`` / ``lru_cache`` with a clearing ``__eq__``;
``json.dumps`` whose ``default`` clears the list or dict being encoded; ``struct.pack_into`` / ``unpack_from``,
``zlib`` (de)compress objects, ``hashlib`` and ``re.sub`` / ``finditer`` / ``scanner`` on a bytearray the hook
resizes (an export is held: ``BufferError``); the array slice store / delete, ``*=``, comparisons; the
bytearray methods whose arguments are converted before the buffer is taken (``replace`` / ``split`` /
``ljust`` / ``hex`` ...); ``super(T, x)`` over a host object (refused), and own subclasses of ``dict``, ``list``,
``Exception``, ``enum.Enum`` and dataclasses using ``super()`` (still work).
Not fixed (low, noted): module state a cell sets (``random.seed``, ``csv.field_size_limit``) still survives
``reset()``.
"""

from __future__ import annotations

import pytest
from _escape_helpers import LEAK_ONLY, WIN, assert_healthy, attack, check_refused

# a value whose __iter__ shrinks the list being stored into, after the extended slice's length was taken
_SHRINK = ("import collections, operator\nl = list(range(100))\nclass It:\n    def __iter__(self):\n"
           "        del l[10:]\n        return iter(['x'] * 50)\n")
_SIZE = ("ValueError",)  # the converted value no longer fits the slice
# a key whose __eq__ clears the OrderedDict it is looked up in
_CLEAR_OD = ("import collections, typing\no = collections.OrderedDict((i, i) for i in range(1000))\nclass H:\n"
             "    def __hash__(self):\n        return 5\n    def __eq__(self, other):\n        o.clear()\n"
             "        return True\n")

ROUND18 = [
    attack("review18", "list_extended_slice_store_shrunk_by_the_value", _SHRINK + "l[::2] = It()\n" + WIN,
           errors=_SIZE),
    attack("review18", "list_extended_slice_store_by_a_generator",
           "l = list(range(100))\ndef g():\n    del l[10:]\n    yield from range(50)\nl[::-2] = g()\n" + WIN,
           errors=_SIZE),
    attack("review18", "list_extended_slice_store_by_operator_setitem",
           _SHRINK + "operator.setitem(l, slice(None, None, 2), It())\n" + WIN, errors=_SIZE),
    attack("review18", "list_extended_slice_store_by_super_setitem",
           _SHRINK + "class L(list):\n    def __setitem__(self, k, v):\n        super().__setitem__(k, v)\n"
           "l = L(range(100))\nl[::2] = It()\n" + WIN, errors=_SIZE),
    attack("review18", "list_extended_slice_store_by_own_subclass_setitem",
           _SHRINK + "class L(list):\n    pass\nl = L(range(100))\nL.__setitem__(l, slice(None, None, 2), It())\n"
           + WIN, errors=_SIZE),
    attack("review18", "userlist_setitem_stores_natively",
           "import collections\nclass U(collections.UserList):\n    pass\nu = U(range(100))\ndef g():\n"
           "    del u.data[10:]\n    yield from range(50)\nu[::2] = g()\n" + WIN, errors=_SIZE),
    attack("review18", "ordered_dict_move_to_end_reads_a_freed_node", _CLEAR_OD + "o.move_to_end(H())\n" + WIN,
           errors=("KeyError",)),
    attack("review18", "ordered_dict_pop_reads_a_freed_node", _CLEAR_OD + "o.pop(H())\n" + WIN,
           errors=("KeyError",)),
    attack("review18", "ordered_dict_del_reads_a_freed_node", _CLEAR_OD + "del o[H()]\n" + WIN,
           errors=("KeyError",)),
    attack("review18", "typing_ordered_dict_makes_a_c_one",
           _CLEAR_OD + "o = typing.OrderedDict((i, i) for i in range(1000))\no.move_to_end(H())\n" + WIN,
           errors=("KeyError",)),
    # round 17's fix passed a bytes argument to bytearray's searches as it was: CPython takes any object
    # with an __index__ for an int, an own bytes subclass's too, and ran it on the stale buffer (a SIGSEGV)
    attack("review18", "bytes_subclass_index_frees_the_searched_bytearray",
           "class B(bytes):\n    def __index__(self):\n        ba.clear()\n        return 65\n"
           "ba = bytearray(b'x' * 36_000_000)\nif (B(b'z') in ba) or ba.find(B(b'z')) >= 0:\n    " + WIN,
           errors=LEAK_ONLY),
]

CONTAINED = [
    attack("review18", "bytearray_stores_reload_the_buffer",
           "ba = bytearray(36_000_000)\nclass K:\n    def __index__(self):\n        ba.clear()\n"
           "        ba.extend(bytes(300))\n        return 0\nba[K():100:2] = b'A' * 50\n"
           "ba.extend(bytes(36_000_000))\ndel ba[K():100:2]\nba.extend(bytes(36_000_000))\nba[K()] = 66\n"
           "ba.extend(bytes(36_000_000))\nba[3] = K()\nif len(ba) < 300:\n    " + WIN, errors=LEAK_ONLY),
    attack("review18", "list_methods_that_reload_the_size",
           "l = list(range(100000))\nclass E:\n    def __eq__(self, o):\n        l.clear()\n        return False\n"
           "    def __index__(self):\n        l.clear()\n        return 5000\n    def __iter__(self):\n"
           "        l.clear()\n        return iter([1] * 10)\n"
           "for f in (lambda: l.count(E()), lambda: E() in l, lambda: l.insert(E(), 1), lambda: l.pop(E()),\n"
           "          lambda: l.__imul__ if False else l * E(), lambda: l.extend(E()), lambda: l.index(E()),\n"
           "          lambda: l.remove(E()), lambda: operator.setitem(l, slice(5, 50000), E()),\n"
           "          lambda: l.sort(key=lambda x: l.append(1) or x)):\n"
           "    l[:] = range(100000)\n    try:\n        f()\n    except (ValueError, IndexError):\n        pass\n"
           .replace("for f", "import operator\nfor f") + "if len(l) > 200000:\n    " + WIN, errors=LEAK_ONLY),
    attack("review18", "containers_with_clearing_hooks",
           "import collections, heapq, bisect, functools, itertools, json\nl = [0] * 1000\nclass E:\n"
           "    def __lt__(self, o):\n        l.clear()\n        return False\n    __gt__ = __lt__\n"
           "    def __eq__(self, o):\n        l.clear()\n        d.clear()\n        s.clear()\n        q.clear()\n"
           "        return False\n    def __hash__(self):\n        return 5\n"
           "d = {}\ns = set()\nq = collections.deque()\n"
           "fs = (lambda: heapq.heapify(l), lambda: heapq.heappop(l), lambda: heapq.heappushpop(l, E()),\n"
           "      lambda: bisect.insort(l, E()), lambda: d == dict(d), lambda: E() in d, lambda: d.pop(E(), 0),\n"
           "      lambda: s & {E()}, lambda: s.difference_update([E()]), lambda: q.index(E()), lambda: q.remove(E()),\n"
           "      lambda: q == collections.deque(q), lambda: functools.reduce(lambda a, b: l.clear(), l),\n"
           "      lambda: json.dumps(l, default=lambda o: l.clear()), lambda: d.items() & {(E(), 1)})\n"
           "for f in fs:\n    l[:] = [0] * 1000\n    l[1] = E()\n    d.update({i: i for i in range(1000)})\n"
           "    d[E()] = 1\n    s.update(range(1000))\n    s.add(E())\n    q.extend(range(1000))\n    q.append(E())\n"
           "    try:\n        f()\n    except (ValueError, IndexError, RuntimeError, TypeError):\n        pass\n"
           "if len(l) > 1000:\n    " + WIN, errors=LEAK_ONLY),
    attack("review18", "buffer_consumers_hold_an_export",
           "import struct, zlib, hashlib, re\nba = bytearray(b'ab' * 18_000_000)\nn = [0]\nclass I:\n"
           "    def __index__(self):\n        try:\n            ba.clear()\n        except BufferError:\n"
           "            n[0] += 1\n        return 1\n"
           "struct.pack_into('b', ba, I(), I())\nstruct.unpack_from('b', ba, I())\n"
           "zlib.decompressobj().decompress(ba, I())\nzlib.crc32(ba, I())\nhashlib.shake_128(ba).digest(I())\n"
           "def f(m):\n    try:\n        ba.clear()\n    except BufferError:\n        n[0] += 1\n    return b'x'\n"
           "re.sub(b'a', f, ba[:1000])\nre.sub(b'a', f, ba, count=2)\nif len(ba) != 36_000_000:\n    " + WIN,
           errors=LEAK_ONLY),
    attack("review18", "super_over_a_host_object",
           "import collections\nsuper(collections.OrderedDict, collections.OrderedDict()).move_to_end\n" + WIN),
]


@pytest.mark.parametrize("a", ROUND18)
def test_round18_findings_are_refused(fresh, a):
    check_refused(fresh, a, fresh.execute(a.code))


@pytest.mark.parametrize("a", CONTAINED)
def test_round18_probes_stay_contained(fresh, a):
    check_refused(fresh, a, fresh.execute(a.code))


def test_lists_and_ordered_dicts_still_work(repl):
    res = repl.execute(
        "import collections, typing, copy, json, operator\n"
        "l = list(range(10))\nl[::2] = (x * 10 for x in range(5))\nl[1:3] = map(str, [7, 8])\nl[0] = 'a'\n"
        "l[-1] += 1\ndel l[::3]\noperator.setitem(l, slice(None, 2), [1])\nl2 = [[0]]\nl2[0][0] = 5\n"
        "class L(list):\n    def __setitem__(self, k, v):\n        super().__setitem__(k, v)\n"
        "m = L([0, 0, 0, 0])\nm[::2] = iter('ab')\nm[1] = 9\nclass L2(list):\n    pass\nn = L2([0, 0])\n"
        "L2.__setitem__(n, slice(None), iter([3]))\nn[0:] = (4, 5)\n"
        "class U(collections.UserList):\n    pass\nu = U([0, 0, 0])\nu[::2] = iter('xy')\nu[1] = 1\n"
        "try:\n    l.x = 1\nexcept AttributeError:\n    print('no attr')\n"
        "print(l, l2, m, n, u)\n"
        "o = collections.OrderedDict([('b', 1), ('a', 2)])\no['c'] = 3\no.move_to_end('b')\n"
        "o.move_to_end('c', last=False)\nprint(o, o.popitem(), o.pop('a'), list(o), list(reversed(o)), o == {'c': 3},"
        " isinstance(o, dict), type(o).__name__, copy.deepcopy(o), o | {'z': 0}, type(o.copy()) is type(o))\n"
        "t = typing.OrderedDict(x=1)\nclass O(collections.OrderedDict):\n    def __setitem__(self, k, v):\n"
        "        super().__setitem__(k, v * 2)\no2 = O()\no2['q'] = 2\n"
        "print(t, type(t) is collections.OrderedDict, o2, json.loads('{\"b\": 1, \"a\": 2}', "
        "object_pairs_hook=collections.OrderedDict), collections.OrderedDict.fromkeys('ab'))")
    assert res.error is None, res.error
    assert res.stdout == (
        "no attr\n"
        "[1, 20, 5, 7, 40] [[5]] ['a', 9, 'b', 0] [4, 5] ['x', 1, 'y']\n"
        "OrderedDict([('c', 3)]) ('b', 1) 2 ['c'] ['c'] True True OrderedDict "
        "OrderedDict([('c', 3)]) OrderedDict([('c', 3), ('z', 0)]) True\n"
        "OrderedDict([('x', 1)]) True O([('q', 4)]) OrderedDict([('b', 1), ('a', 2)]) "
        "OrderedDict([('a', None), ('b', None)])\n")
    assert_healthy(repl)


def test_super_in_ordinary_classes_still_works(repl):
    res = repl.execute(
        "import enum, dataclasses\nclass D(dict):\n    def __setitem__(self, k, v):\n"
        "        super().__setitem__(k, v + 1)\nclass E(Exception):\n    def __init__(self, m):\n"
        "        super().__init__('E: ' + m)\nclass C(enum.Enum):\n    A = 1\n    def describe(self):\n"
        "        return super().__str__()\n@dataclasses.dataclass\nclass P:\n    x: int\n"
        "@dataclasses.dataclass\nclass Q(P):\n    y: int = 0\n    def __post_init__(self):\n"
        "        self.y = self.x * 2\nclass Base:\n    registry = []\n    def __init_subclass__(cls, **kw):\n"
        "        super().__init_subclass__(**kw)\n"
        "        Base.registry.append(cls.__name__)\n    def __new__(cls, *a):\n        return super().__new__(cls)\n"
        "    @classmethod\n    def make(cls):\n        return cls()\nclass Sub(Base):\n    @classmethod\n"
        "    def make(cls):\n        return super().make()\nd = D()\nd['a'] = 1\n"
        "print(d, E('x').args, C.A.describe(), Q(3), Base.registry, type(Sub.make()).__name__)")
    assert res.error is None, res.error
    assert res.stdout == "{'a': 2} ('E: x',) C.A Q(x=3, y=6) ['Sub'] Sub\n"
    assert_healthy(repl)
