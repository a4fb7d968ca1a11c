"""The policy shape cache serves each cell the code a fresh check compiles.

A cell that differs from an earlier one only in integer literals reuses the earlier cell's
checked tree, and where ``compile`` only loads those literals, a copy of its compiled code
with the new numbers in the constants (``_policy._CodeSlots``). These tests take cells that
share a shape (the same text but for digit runs of the same widths) while ``compile`` reads
their numbers differently (a test it decides at compile time, a folded operand, an int
constant that compile merges with another) and check that the cache gives each one exactly
the code, and so the behaviour, of a fresh check; and that plain cells do take the copy.
"""

from __future__ import annotations

import types
from typing import Any

import pytest

from loopagent.environments import _guards, _policy


def _template(shapes: _policy.ShapeCache, source: str) -> Any:
    key = _policy._text_key(source)
    assert key is not None
    found = shapes._templates.get(key[0])
    return found[0] if found is not None else None


def _warm(source: str) -> _policy.ShapeCache:
    shapes = _policy.ShapeCache()
    for _ in range(2):  # a template is kept from a text's second sighting on
        _policy.compile_cell(source, shapes)
    assert _template(shapes, source) is not None, source
    return shapes


def _same_code(a: types.CodeType | None, b: types.CodeType | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b and a.co_flags == b.co_flags and list(a.co_positions()) == list(b.co_positions())


def _run(cell: _policy.CompiledCell) -> Any:
    """What the cell leaves in ``r``, ``s`` and ``t`` (or the exception it raised) and its value."""
    ns = _guards.make_namespace()
    ns["f"] = lambda *a, **k: (a, k)
    ns["y"] = "y"
    try:
        if cell.body is not None:
            exec(cell.body, ns)
        value = eval(cell.last_expr, ns) if cell.last_expr is not None else None
    except Exception as e:
        return ("raised", type(e).__name__)
    return tuple(ns.get(name, "<unset>") for name in ("r", "s", "t")), value


def _check_group(sources: list[str]) -> _policy.ShapeCache:
    """Warm a cache on the first source, then each source through it must compile and run
    like a fresh check of it."""
    shapes = _warm(sources[0])
    for source in sources:
        fresh, cached = _policy.compile_cell(source), _policy.compile_cell(source, shapes)
        assert _same_code(fresh.body, cached.body) and _same_code(fresh.last_expr, cached.last_expr), source
        assert _run(fresh) == _run(cached), source
    return shapes


PLAIN = [
    ["r = 5", "r = 6", "r = 0", "r = 9"],
    ["r = f(3, k=4)\nr", "r = f(5, k=6)\nr", "r = f(0, k=1)\nr"],
    ["r = 'abcdefghij'[1:4]", "r = 'abcdefghij'[0:9]", "r = 'abcdefghij'[2:2]"],
    ["r = {'a': 1, 'b': 2}", "r = {'a': 0, 'b': 9}"],
    ["s = 3\nr = s < 5", "s = 7\nr = s < 2"],
    ["def g(a):\n    return 3\nr = g(1)", "def g(a):\n    return 0\nr = g(2)"],
    ["r = 12\nr += 30", "r = 99\nr += 10"],
    # a subscript is a guard call after the rewrite (_getitem_), so nothing is folded
    ["r = 'abcdef'[1]", "r = 'abcdef'[9]"],
]


@pytest.mark.parametrize("sources", PLAIN, ids=[g[0].splitlines()[0] for g in PLAIN])
def test_plain_cells_are_served_a_copy_of_the_compiled_code(sources: list[str]) -> None:
    shapes = _check_group(sources)
    assert _template(shapes, sources[0]).codes is not None, "the copy path was not taken"


# Same shape, different meaning at compile time. Each group: the cells, and whether the
# copy is allowed for the shape (False: a check must have refused it).
DIFFERENT = [
    # a test decided while compiling: the branch not taken is not in the code at all
    (["r = 5 or y", "r = 0 or y"], False),
    (["r = 5 and y", "r = 0 and y"], False),
    (["if 1:\n    r = 2\nelse:\n    r = 3", "if 0:\n    r = 2\nelse:\n    r = 3"], False),
    (["r = 7 if 1 else 8", "r = 7 if 0 else 8"], False),
    (["while 1:\n    r = 1\n    break", "while 0:\n    r = 1\n    break"], False),
    (["assert 1", "assert 0"], False),
    (["r = [v for v in range(3) if 1]", "r = [v for v in range(3) if 0]"], False),
    # folded operands: the constant in the code is computed from the literals
    (["r = -5", "r = -7"], False),
    (["r = 2 ** 10", "r = 3 ** 10", "r = 0 ** 10"], False),
    (["r = 256 & 0x40000000000000FF", "r = 255 & 0x40000000000000FF"], False),
    (["r = (1, 2)", "r = (3, 3)"], False),
    (["r = [1, 2, 3]", "r = [4, 4, 0]"], False),
    (["r = 5 in {1, 2}", "r = 1 in {1, 2}"], False),
    # an int constant of the cell equal to a stand-in: compile merges the two (caught by
    # the compile with the second set of stand-ins)
    (["r = 5\ns = 0x4000000000000000", "r = 6\ns = 0x4000000000000000"], False),
    (["r = 5\ns = 0x4000000000000001", "r = 6\ns = 0x4000000000000001"], False),
    # equal numbers: compile merges them into one constant (one object); served by a compile
    (["r = 1000\ns = 2000\nt = r is s", "r = 1000\ns = 1000\nt = r is s", "r = 3000\ns = 3000\nt = r is s"], True),
    (["r = 1000\ns = f(0x7d0)\nt = s[0][0] is r", "r = 2000\ns = f(0x7d0)\nt = s[0][0] is r"], True),
]


@pytest.mark.parametrize("sources,copy_allowed", DIFFERENT, ids=[g[0][0].splitlines()[0] for g in DIFFERENT])
def test_cells_of_one_shape_compile_like_a_fresh_check(sources: list[str], copy_allowed: bool) -> None:
    shapes = _check_group(sources)
    assert (_template(shapes, sources[0]).codes is not None) is copy_allowed
    # the cells really differ: the test would not notice a wrong share otherwise
    assert len({repr(_run(_policy.compile_cell(s))) for s in sources}) > 1


def test_stand_ins_are_no_slot_value() -> None:
    """A slot is a digit run of at most 18 digits; the stand-ins are larger than any."""
    assert _policy._INT_RUN.fullmatch("9" * 18) and not _policy._INT_RUN.fullmatch("9" * 19)
    assert min(_policy._stand_ins(1, 0) + _policy._stand_ins(1, 1)) > 10**18


def test_refused_cells_are_refused_through_the_copy_path_too() -> None:
    shapes = _warm("r = f(5)")
    for source in ("r = f(6)", "r = f(7)"):
        _policy.compile_cell(source, shapes)
    with pytest.raises(_policy.PolicyViolation):
        _policy.compile_cell("r = f(5).__globals__", shapes)
