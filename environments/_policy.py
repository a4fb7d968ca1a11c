"""The language policy of the sandbox, at compile time: how a cell of model code is checked.

This module is what happens when a cell is compiled: the rewrite (``_Transformer``),
``compile_cell``, ``PolicyViolation`` and the shape cache. The rule and the guards the
rewritten code calls while it runs are in ``_guards``, kept apart because they run on
every access, this once per cell. Runs inside the worker as a top-level module.
"""

from __future__ import annotations

import ast
import copy
import importlib
import re
import types
import warnings
from typing import Any

from RestrictedPython.transformer import RestrictingNodeTransformer, copy_locations

# The worker imports this module as the top-level `_policy` (its folder on sys.path), the
# parent and tests as `loopagent.environments._policy`: take `_guards` the same way.
_guards = importlib.import_module("._guards", __package__) if __package__ else importlib.import_module("_guards")
_BLOCKED_ATTRS = _guards._BLOCKED_ATTRS
_CLASS_DATA_DUNDERS = _guards._CLASS_DATA_DUNDERS
_FUTURE = _guards._FUTURE
_PRELOAD_EXTRA = frozenset(_guards._PRELOAD_EXTRA)
_is_dunder = _guards._is_dunder
DEFINABLE_DUNDERS = _guards.DEFINABLE_DUNDERS
ENUM_BOOKKEEPING = _guards.ENUM_BOOKKEEPING
OWN_DUNDERS = _guards.OWN_DUNDERS
SAFE_DUNDERS = _guards.SAFE_DUNDERS
WRITABLE_DUNDERS = _guards.WRITABLE_DUNDERS

FILENAME = _guards.CELL_FILENAME


# -- compiling --------------------------------------------------------------------------


class CompiledCell:
    """One cell of model code: the statements, plus a trailing expression whose
    value is shown like in a notebook (``None`` is not shown)."""

    __slots__ = ("body", "last_expr")

    def __init__(self, body: types.CodeType | None, last_expr: types.CodeType | None) -> None:
        self.body = body
        self.last_expr = last_expr


#: Names the rewritten code uses for the guards (and RestrictedPython's temporaries).
_RESERVED_NAMES = frozenset({
    "_getattr_", "_getitem_", "_getiter_", "_iter_unpack_sequence_", "_unpack_sequence_", "_write_",
    "_inplacevar_", "_apply_", "_print_", "_print", "_match_class_", "_match_value_", "_match_bind_",
    "_match_check_",
})
_TMP_NAME = re.compile(r"_tmp\d+\Z")
#: Values that are always built-in objects, never the sandbox's own: a dunder read
#: on one of them is refused while compiling (``().__class__``).
_LITERALS = (ast.Constant, ast.List, ast.Tuple, ast.Set, ast.Dict, ast.JoinedStr, ast.ListComp, ast.SetComp,
             ast.DictComp, ast.GeneratorExp, ast.Lambda)
_NO_ASYNC = "is not available in the sandbox: there is no event loop (asyncio is not importable); use plain functions"


class _Transformer(RestrictingNodeTransformer):
    """RestrictedPython's rewrite, with the language of real model code let through
    (see the module docstring of ``_guards``): private names, the dunders of DEFINABLE_DUNDERS,
    augmented assignment to attributes and items, ``nonlocal``, ``match``, class
    annotations. Function annotations are dropped (nothing may evaluate them)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._scopes: list[str | None] = []  # enclosing class names; None for a function

    # -- names -------------------------------------------------------------
    def check_name(self, node: Any, name: str | None, allow_magic_methods: bool = False) -> None:
        if name is None or not name.startswith("_") or name == "_":
            return super().check_name(node, name)
        if _is_dunder(name):
            allowed = name in DEFINABLE_DUNDERS
            if not allow_magic_methods:
                allowed = allowed or name in _CLASS_DATA_DUNDERS or (
                    name == "__class__" and isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load))
            if not allowed:
                self.error(node, f'"{name}" is an invalid name: dunder names other than special methods are '
                                 "reserved in the sandbox")
        elif name in _RESERVED_NAMES or _TMP_NAME.match(name):
            self.error(node, f'"{name}" is an invalid name: it is reserved for the sandbox')

    def visit_Import(self, node: ast.Import) -> Any:
        for alias in node.names:
            if alias.name.startswith("_"):
                self.error(node, f'"{alias.name}" is a private module: not available in the sandbox')
            elif alias.name in _PRELOAD_EXTRA:
                # guarded_import lets these through for C code (str.encode imports its codec); written
                # in a cell, `import encodings.idna as e` would bind the module natively (IMPORT_FROM)
                self.error(node, f'import of "{alias.name}" is not allowed in the sandbox')
        return super().visit_Import(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> Any:
        if node.module and node.module.startswith("_") and node.module != _FUTURE:
            self.error(node, f'"{node.module}" is a private module: not available in the sandbox')
        return super().visit_ImportFrom(node)

    def visit_Nonlocal(self, node: ast.Nonlocal) -> Any:
        for name in node.names:
            self.check_name(node, name)
        return node

    def visit_Global(self, node: ast.Global) -> Any:
        for name in node.names:
            self.check_name(node, name)
        return node

    # -- attributes --------------------------------------------------------
    def _mangle(self, name: str) -> str:
        """What CPython does to ``self.__x`` in a class; the guards get the name as
        a string, which the compiler leaves alone."""
        if not name.startswith("__") or name.endswith("__"):
            return name
        cls = next((s for s in reversed(self._scopes) if s is not None), None)
        cls = cls.lstrip("_") if cls else None
        return f"_{cls}{name}" if cls else name

    def _attribute_error(self, attr: str, value: ast.expr, store: bool) -> str | None:
        if attr.endswith("__roles__") or attr in _BLOCKED_ATTRS:
            return f'"{attr}" is a restricted name: frames and code objects are off limits'
        if store and attr in ENUM_BOOKKEEPING:
            return f'"{attr}" cannot be assigned in the sandbox: enum classes keep their members by it'
        if not _is_dunder(attr):
            return None  # private names are checked when the code runs (the sandbox's own objects only)
        if store:
            if attr not in WRITABLE_DUNDERS:
                return f'"{attr}" cannot be assigned in the sandbox'
        elif attr not in SAFE_DUNDERS:
            if attr not in OWN_DUNDERS:
                return f'"{attr}" is an invalid attribute name: it leads out of the sandbox'
            if isinstance(value, _LITERALS):
                return f'"{attr}" of a built-in object is not allowed: dunders are readable on own objects only'
        return None

    def visit_Attribute(self, node: ast.Attribute) -> Any:
        store = not isinstance(node.ctx, ast.Load)
        error = self._attribute_error(node.attr, node.value, store)
        if error:
            self.error(node, error)
        node = self.node_contents_visit(node)
        if not store:
            call = ast.Call(func=ast.Name("_getattr_", ast.Load()),
                            args=[node.value, ast.Constant(self._mangle(node.attr))], keywords=[])
            copy_locations(call, node)
            return call
        node.value = ast.Call(func=ast.Name("_write_", ast.Load()), args=[node.value], keywords=[])
        copy_locations(node.value, node)
        return node

    # -- statements --------------------------------------------------------
    def visit_AugAssign(self, node: ast.AugAssign) -> Any:
        """``obj.attr += v`` / ``obj[k] += v``: obj (and k) evaluated once, read
        through the guards, written through ``_write_``."""
        target = node.target
        if isinstance(target, ast.Name):
            return super().visit_AugAssign(node)
        op = ast.Constant(_IOPS[type(node.op)])
        t_obj = self.gen_tmp_name()
        stmts: list[ast.stmt] = [ast.Assign(targets=[ast.Name(t_obj, ast.Store())], value=self.visit(target.value))]
        temps = [t_obj]
        if isinstance(target, ast.Attribute):
            for store in (False, True):
                error = self._attribute_error(target.attr, target.value, store)
                if error:
                    self.error(node, error)
                    break
            current: ast.expr = ast.Call(func=ast.Name("_getattr_", ast.Load()),
                                         args=[ast.Name(t_obj, ast.Load()), ast.Constant(self._mangle(target.attr))],
                                         keywords=[])
            new_target: ast.expr = ast.Attribute(value=_call("_write_", ast.Name(t_obj, ast.Load())),
                                                 attr=target.attr, ctx=ast.Store())
        else:
            t_key = self.gen_tmp_name()
            temps.append(t_key)
            key = _slice_expr(self.visit(target.slice))
            stmts.append(ast.Assign(targets=[ast.Name(t_key, ast.Store())], value=key))
            current = _call("_getitem_", ast.Name(t_obj, ast.Load()), ast.Name(t_key, ast.Load()))
            new_target = ast.Subscript(value=_call("_write_", ast.Name(t_obj, ast.Load())),
                                       slice=ast.Name(t_key, ast.Load()), ctx=ast.Store())
        value = _call("_inplacevar_", op, current, self.visit(node.value))
        stmts.append(ast.Assign(targets=[new_target], value=value))
        stmts.append(ast.Delete(targets=[ast.Name(t, ast.Del()) for t in temps]))
        for stmt in stmts:
            copy_locations(stmt, node)
            ast.fix_missing_locations(stmt)
        return stmts

    def visit_arg(self, node: ast.arg) -> Any:
        node.annotation = None
        return super().visit_arg(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> Any:
        node.returns = None
        self._scopes.append(None)
        try:
            return super().visit_FunctionDef(node)
        finally:
            self._scopes.pop()

    def visit_ClassDef(self, node: ast.ClassDef) -> Any:
        self._scopes.append(node.name)
        try:
            new = super().visit_ClassDef(node)
        finally:
            self._scopes.pop()
        # RestrictedPython rebuilds the node with metaclass=__metaclass__ only; keep the
        # class keywords (`class A(Base, key=1)`, for __init_subclass__)
        new.keywords.extend(k for k in node.keywords if k.arg != "metaclass")
        return new

    def visit_AnnAssign(self, node: ast.AnnAssign) -> Any:
        if self._scopes and self._scopes[-1] is not None and isinstance(node.target, ast.Name):
            # In a class body the annotation is kept: dataclasses, NamedTuple and
            # TypedDict read __annotations__. It is an ordinary guarded expression;
            # a string stays a string, and nothing trusted evaluates it (get_type_hints
            # and singledispatch are refused).
            return self.node_contents_visit(node)
        if node.value is None:
            empty = ast.Pass()  # a bare annotation binds nothing
            copy_locations(empty, node)
            return empty
        assign = ast.Assign(targets=[node.target], value=node.value)
        copy_locations(assign, node)
        return self.visit(assign)

    # -- match -------------------------------------------------------------
    def _check_dotted(self, node: ast.expr) -> None:
        """A dotted name in a pattern is read natively (no guard can be put there)."""
        while isinstance(node, ast.Attribute):
            self._check_pattern_attr(node, node.attr)
            node = node.value
        if isinstance(node, ast.Name):
            self.check_name(node, node.id)

    def _check_pattern_attr(self, node: ast.AST, name: str) -> None:
        if name.startswith("_") or name in _BLOCKED_ATTRS or name in ("format", "format_map"):
            self.error(node, f'"{name}" cannot be read in a pattern in the sandbox')

    def visit_Match(self, node: ast.Match) -> Any:
        """Patterns read classes, dotted values and mapping keys natively. Each is evaluated
        once, through the guards, before the ``match`` (classes also checked), and the pattern
        reads it back from a reserved temporary: nothing can swap it in between (a walrus in
        the subject, a property on a dotted name, a guard of an earlier case)."""
        before: list[ast.stmt] = []
        for case in node.cases:
            for sub in ast.walk(case.pattern):
                if isinstance(sub, ast.MatchClass):
                    sub.cls = self._pattern_slot(sub.cls, "_match_class_", before)
                elif isinstance(sub, ast.MatchValue) and isinstance(sub.value, ast.Attribute):
                    sub.value = self._pattern_slot(sub.value, "_match_value_", before)
                elif isinstance(sub, ast.MatchMapping):
                    sub.keys = [self._pattern_slot(k, "_match_value_", before) if isinstance(k, ast.Attribute) else k
                                for k in sub.keys]
        node = self.node_contents_visit(node)
        for case in node.cases:
            self._vet_captures(case)
        for stmt in before:
            copy_locations(stmt, node)
            ast.fix_missing_locations(stmt)
        return [*before, node] if before else node

    def _vet_captures(self, case: ast.match_case) -> None:
        """The values a pattern binds were read natively (class patterns read attributes,
        mapping patterns ``.get`` keys, sequence patterns index items), past the vetting
        ``_getattr_`` / ``_getitem_`` give every read. The case's guard is rewritten to
        put each bound value through it first: ``_match_check_((x := _match_bind_(x)), ...)
        and (guard)``. CPython binds the names before the guard runs and keeps them when
        the guard is false or raises, so a denied value is replaced by an inert marker
        before ``_match_check_`` raises (a ``try`` around the ``match`` must not find the
        real value bound). A bare capture (``case x:``) binds the subject itself: nothing new."""
        pattern = case.pattern
        if isinstance(pattern, ast.MatchAs) and pattern.pattern is None:
            return
        names: dict[str, None] = {}
        for sub in ast.walk(pattern):
            name = None
            if isinstance(sub, (ast.MatchAs, ast.MatchStar)):
                name = sub.name
            elif isinstance(sub, ast.MatchMapping):
                name = sub.rest
            if name is not None:
                names[name] = None
        if not names:
            return
        binds: list[ast.expr] = [
            ast.NamedExpr(target=ast.Name(name, ast.Store()), value=_call("_match_bind_", ast.Name(name, ast.Load())))
            for name in names]
        check: ast.expr = _call("_match_check_", *binds)
        case.guard = check if case.guard is None else ast.BoolOp(op=ast.And(), values=[check, case.guard])
        copy_locations(case.guard, pattern)
        ast.fix_missing_locations(case.guard)

    def _pattern_slot(self, expr: ast.expr, holder: str, before: list[ast.stmt]) -> ast.expr:
        self._check_dotted(expr)
        tmp = self.gen_tmp_name()
        value = _call(holder, self.visit(_copy_expr(expr)))
        before.append(ast.Assign(targets=[ast.Name(tmp, ast.Store())], value=value))
        slot = ast.Attribute(value=ast.Name(tmp, ast.Load()), attr="v", ctx=ast.Load())
        copy_locations(slot, expr)
        copy_locations(slot.value, expr)
        return slot

    def visit_match_case(self, node: ast.match_case) -> Any:
        return self.node_contents_visit(node)

    def visit_MatchClass(self, node: ast.MatchClass) -> Any:
        # node.cls was checked and moved to a temporary by visit_Match
        for name in node.kwd_attrs:
            self._check_pattern_attr(node, name)
        node.patterns = [self.visit(p) for p in node.patterns]
        node.kwd_patterns = [self.visit(p) for p in node.kwd_patterns]
        return node

    def visit_MatchValue(self, node: ast.MatchValue) -> Any:
        return node  # a literal, or a dotted name visit_Match checked and moved to a temporary

    def visit_MatchSingleton(self, node: ast.MatchSingleton) -> Any:
        return node

    def visit_MatchSequence(self, node: ast.MatchSequence) -> Any:
        return self.node_contents_visit(node)

    def visit_MatchOr(self, node: ast.MatchOr) -> Any:
        return self.node_contents_visit(node)

    def visit_MatchMapping(self, node: ast.MatchMapping) -> Any:
        # dotted keys were checked and moved to temporaries by visit_Match
        self.check_name(node, node.rest)
        node.patterns = [self.visit(p) for p in node.patterns]
        return node

    def visit_MatchStar(self, node: ast.MatchStar) -> Any:
        self.check_name(node, node.name)
        return node

    def visit_MatchAs(self, node: ast.MatchAs) -> Any:
        self.check_name(node, node.name)
        return self.node_contents_visit(node)

    # -- async -------------------------------------------------------------
    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> Any:
        self.error(node, f"async def {_NO_ASYNC}")

    def visit_Await(self, node: ast.Await) -> Any:
        self.error(node, f"await {_NO_ASYNC}")

    def visit_AsyncFor(self, node: ast.AsyncFor) -> Any:
        self.error(node, f"async for {_NO_ASYNC}")

    def visit_AsyncWith(self, node: ast.AsyncWith) -> Any:
        self.error(node, f"async with {_NO_ASYNC}")


_IOPS = {
    ast.Add: "+=", ast.Sub: "-=", ast.Mult: "*=", ast.Div: "/=", ast.FloorDiv: "//=", ast.Mod: "%=",
    ast.Pow: "**=", ast.LShift: "<<=", ast.RShift: ">>=", ast.BitAnd: "&=", ast.BitOr: "|=",
    ast.BitXor: "^=", ast.MatMult: "@=",
}


def _call(name: str, *args: ast.expr) -> ast.Call:
    return ast.Call(func=ast.Name(name, ast.Load()), args=list(args), keywords=[])


def _copy_expr(node: ast.expr) -> ast.expr:
    return copy.deepcopy(node)  # the pattern keeps its own (unguarded) copy


def _slice_expr(node: ast.expr) -> ast.expr:
    """``a[1:2]`` as a value: ``slice(1, 2, None)`` (a Slice node is valid only in a subscript)."""
    if isinstance(node, ast.Slice):
        parts = [p if p is not None else ast.Constant(None) for p in (node.lower, node.upper, node.step)]
        return _call("slice", *parts)
    if isinstance(node, ast.Tuple) and any(isinstance(e, ast.Slice) for e in node.elts):
        return ast.Tuple(elts=[_slice_expr(e) for e in node.elts], ctx=ast.Load())
    return node


class PolicyViolation(SyntaxError):
    """The code does not compile under the sandbox policy."""


def compile_cell(source: str, shapes: ShapeCache | None = None) -> CompiledCell:
    """Compile model code; raises :class:`PolicyViolation` with every error found.

    With ``shapes``, a cell that differs from an earlier accepted one only in the values
    of integer literals reuses that cell's policy-checked tree (see :class:`ShapeCache`).
    """
    text_key = None
    if shapes is not None:
        text_key = _text_key(source)
        if text_key is not None:
            cell = shapes.lookup(*text_key)
            if cell is not None:
                return cell
    try:
        tree = ast.parse(source, FILENAME, "exec")
    except (ValueError, RecursionError, MemoryError) as e:
        raise PolicyViolation(f"the code could not be parsed: {type(e).__name__}: {e}") from None
    # Only a text seen before gets a template: a one-off cell pays for the key alone.
    ints = _int_literals(tree) if shapes is not None and text_key is not None and shapes.seen(text_key[0]) else None
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr) and not _is_print_call(tree.body[-1].value):
        last = ast.Expression(tree.body.pop().value)
    body_tree = tree if tree.body else None
    body = _restricted("exec", body_tree) if body_tree is not None else None
    last_code = _restricted("eval", last) if last is not None else None
    if shapes is not None and text_key is not None and ints is not None:
        shapes.remember(*text_key, _Template(body_tree, last), ints)
    return CompiledCell(body, last_code)


def _is_print_call(node: ast.expr) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"


def _restricted(mode: str, tree: ast.AST) -> types.CodeType:
    # RestrictedPython's compile_restricted_* compile with the __future__ flags of
    # its own module (PEP 563: every annotation a string); model code gets none.
    errors: list[str] = []
    try:
        _Transformer(errors, [], {}).visit(tree)
        if errors:
            raise PolicyViolation("\n".join(errors))
        return compile(tree, FILENAME, mode, dont_inherit=True)
    except (RecursionError, MemoryError) as e:
        raise PolicyViolation(f"the code is too deeply nested to compile ({type(e).__name__})") from None


# -- the shape cache ----------------------------------------------------------------------
#
# Checking a cell against the policy (RestrictedPython's transformer, a Python-level walk
# over every node) costs several times parsing and compiling it. Models often send cells
# that differ from an earlier one only in integer literals (the next chunk's offsets,
# another index; the benchmark's ``x = {i}``). The transformer's decisions and rewrites do
# not depend on literal values (it never reads ``Constant.value``), so the checked tree of
# the first such cell is kept, and a later cell puts its numbers into it and compiles it
# again: ``compile`` itself still folds and deduplicates constants from the real values.
#
# The cells are matched by text, which needs no parse: the same text outside the digit runs
# and runs of the same widths mean the same tokens, so the same tree with the same
# positions (columns are in the compiled code, for tracebacks), except those numbers.
#
# Compiling the kept tree again is most of what a hit costs, so where it can be shown that
# ``compile`` only loads each slot's value and never looks at it, a hit skips it: the code
# object compiled once is copied with the new numbers in its constants (``_CodeSlots``).
# See ``_CodeSlots.build`` for what is checked; a cell that fails any check, or whose numbers
# would be merged by ``compile`` (two equal values), compiles its tree as before.

# The flags `_restricted` compiles with (none: model code gets no __future__ features it did not
# import itself); recompiling a kept tree must give the same code object.
_COMPILE_FLAGS = 0

# Decimal integer literals as text: a run of digits with no word character on either side
# (so not part of a name, 0x1f, 1_000, 1e5 or 5j; the digits of 1.5 or "a 1" do match,
# and are then found not to be an int literal, see ShapeCache.remember).
_INT_RUN = re.compile(r"\b(0|[1-9][0-9]{0,17})\b")

_Span = tuple[int, int, int, int]


def _text_key(source: str) -> tuple[tuple[Any, ...], list[str]] | None:
    """(the text around the digit runs plus the runs' widths, the runs), or None where the
    cell has no runs or its columns are not plain character offsets (non-ASCII, \\r)."""
    if not source.isascii() or "\r" in source:
        return None
    parts = _INT_RUN.split(source)
    runs = parts[1::2]
    if not runs:
        return None
    return (tuple(parts[0::2]), tuple(map(len, runs))), runs


def _nodes(*roots: ast.AST | None) -> list[ast.AST]:
    """Every node under ``roots`` (iterative: deep trees were already parsed)."""
    out: list[ast.AST] = []
    stack = [root for root in roots if root is not None]
    while stack:
        node = stack.pop()
        out.append(node)
        for name in node._fields:
            value = getattr(node, name, None)
            if isinstance(value, ast.AST):
                stack.append(value)
            elif type(value) is list:
                stack.extend(item for item in value if isinstance(item, ast.AST))
    return out


def _span(node: ast.AST) -> _Span:
    return (node.lineno, node.col_offset, node.end_lineno, node.end_col_offset)  # type: ignore[attr-defined]


def _int_literals(tree: ast.AST) -> dict[_Span, ast.Constant]:
    """The int literals of a parsed cell by position (before the transformer runs)."""
    return {_span(node): node for node in _nodes(tree)
            if type(node) is ast.Constant and type(node.value) is int}  # type: ignore[attr-defined]


class _Template:
    """The policy-checked trees of one cell; ``slots`` are its int literal nodes inside
    them, one per variable digit run of its text; ``codes``, where set, the compiled code
    with the slots located in its constants (see ``_CodeSlots``)."""

    __slots__ = ("body", "last", "slots", "codes")

    def __init__(self, body: ast.Module | None, last: ast.Expression | None) -> None:
        self.body = body
        self.last = last
        self.slots: list[tuple[int, ast.Constant]] = []
        self.codes: _CellCodes | None = None

    def fill(self, values: list[int]) -> CompiledCell:
        """The cell with ``values`` (one per slot, in order) in place of the slots' literals."""
        codes = self.codes
        # compile() merges equal constants into one entry (and one object): copies with a
        # value twice, or one another int constant of the cell has, would not be its code.
        if codes is not None and len(set(values)) == len(values) and codes.other_ints.isdisjoint(values):
            return CompiledCell(codes.body.fill(values) if codes.body is not None else None,
                                codes.last.fill(values) if codes.last is not None else None)
        for (_, node), value in zip(self.slots, values):
            node.value = value
        return self.compile()

    def compile(self) -> CompiledCell:
        body = last = None
        if self.body is not None:
            body = compile(self.body, FILENAME, "exec", flags=_COMPILE_FLAGS, dont_inherit=True)
        if self.last is not None:
            last = compile(self.last, FILENAME, "eval", flags=_COMPILE_FLAGS, dont_inherit=True)
        return CompiledCell(body, last)


class ShapeCache:
    """Policy-checked cell trees by text with integer literals masked (see above).

    Why it is safe: what a hit runs is always a tree that passed the policy, with integer
    values put in where the text had other digits; nothing else of the cell can differ.
    Only cells that passed the policy are kept, and only from a text's second sighting on
    (one-off cells do not pay for building a template). Least recently used entries go
    first. Not thread-safe: a template is filled in place before it is compiled.
    """

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._templates: dict[tuple[Any, ...], tuple[_Template, tuple[tuple[int, str], ...]]] = {}
        self._seen: dict[tuple[Any, ...], None] = {}

    def __len__(self) -> int:
        return len(self._templates)

    def seen(self, key: tuple[Any, ...]) -> bool:
        """Whether ``key`` came before (and note that it has now)."""
        if key in self._seen:
            return True
        _lru_put(self._seen, key, None, 4 * self.size)
        return False

    def lookup(self, key: tuple[Any, ...], runs: list[str]) -> CompiledCell | None:
        found = self._templates.pop(key, None)
        if found is None:
            return None
        self._templates[key] = found  # most recently used last
        template, fixed = found
        if any(runs[i] != text for i, text in fixed):
            return None
        return template.fill([int(runs[i]) for i, _ in template.slots])

    def remember(self, key: tuple[Any, ...], runs: list[str], template: _Template,
                 ints: dict[_Span, ast.Constant]) -> None:
        """Keep ``template`` (the checked trees of the cell with text ``key``/``runs``;
        ``ints`` are its int literals, taken before the check). A run that is an int
        literal becomes a slot; any other run (digits in a string, a comment, a float)
        must read the same in a later cell."""
        texts = key[0]
        fixed: list[tuple[int, str]] = []
        offset = line_start = 0
        line = 1
        for i, run in enumerate(runs):
            before = texts[i]
            if "\n" in before:
                line += before.count("\n")
                line_start = offset + before.rindex("\n") + 1
            offset += len(before)
            col = offset - line_start
            node = ints.get((line, col, line, col + len(run)))
            if node is None:
                fixed.append((i, run))
            elif node.value == int(run):
                template.slots.append((i, node))
            else:  # the positions do not say what they seem to: keep nothing
                return
            offset += len(run)
        if not template.slots:
            return
        # The slots must be the nodes the checked trees hold: a rewrite that copied a
        # literal would keep this cell's value in the copy.
        slot_ids = {id(node) for _, node in template.slots}
        spans = {_span(node) for _, node in template.slots}
        for node in _nodes(template.body, template.last):
            if type(node) is ast.Constant and id(node) not in slot_ids and getattr(node, "lineno", None) is not None \
                    and type(node.value) is int and _span(node) in spans:  # type: ignore[attr-defined]
                return
        template.codes = _CellCodes.build(template)
        _lru_put(self._templates, key, (template, tuple(fixed)), self.size)


# Where a slot literal may sit for its value to be copied into compiled code: places where
# ``compile`` emits a plain LOAD_CONST of it and takes no decision from its value. Not a
# test (``if 0:``, ``while 1:``, ``5 or y``, ``x if 1 else y``: the branch not taken is left
# out of the code, and the constant with it or not), nor an operand that may be folded
# (``-5``, ``2 ** 10``, ``(1, 2)``, ``[1, 2, 3]``, ``"ab"[1]``, ``x in {1, 2}``). Folding is also
# caught by the compile with a second set of values (see _CodeSlots.build); a decision
# taken from the value is not (both sets are true, non-zero), which is what this list is for.
_PLAIN_LOADS: frozenset[tuple[type[ast.AST], str]] = frozenset({
    (ast.Assign, "value"), (ast.AugAssign, "value"), (ast.Return, "value"),
    (ast.Call, "args"), (ast.keyword, "value"),
    (ast.Slice, "lower"), (ast.Slice, "upper"), (ast.Slice, "step"),
    (ast.Compare, "left"), (ast.Compare, "comparators"),
    (ast.Dict, "values"),
})

# Stand-ins compiled in place of the slots' values: larger than any slot value (at most 18
# digits), one set of even and one of odd numbers, so no two are equal.
_STAND_IN = 1 << 62


def _stand_ins(n: int, parity: int) -> list[int]:
    return [_STAND_IN + 2 * i + parity for i in range(n)]


class _CodeSlots:
    """A compiled code object and where in its constants (and in those of the code objects
    it holds) each slot's value sits."""

    __slots__ = ("code", "at", "inner")

    def __init__(self, code: types.CodeType, at: tuple[tuple[int, int], ...],
                 inner: tuple[tuple[int, _CodeSlots], ...]) -> None:
        self.code = code
        self.at = at  # (index in co_consts, slot)
        self.inner = inner  # (index in co_consts, a nested code object holding slots)

    def fill(self, values: list[int]) -> types.CodeType:
        consts = list(self.code.co_consts)
        for i, slot in self.at:
            consts[i] = values[slot]
        for i, sub in self.inner:
            consts[i] = sub.fill(values)
        return self.code.replace(co_consts=tuple(consts))

    @classmethod
    def locate(cls, code: types.CodeType, slot_of: dict[int, int], stand_ins: frozenset[int],
               found: set[int], other_ints: set[int]) -> _CodeSlots | None:
        """``code`` (compiled with the stand-ins ``slot_of`` maps to their slots) with its
        slots located, or None where a stand-in is anywhere but a constant of its own (in a
        folded tuple, ``stand_ins`` holding both sets); the other int constants are added to
        ``other_ints``, the slots seen to ``found``."""
        at: list[tuple[int, int]] = []
        inner: list[tuple[int, _CodeSlots]] = []
        for i, const in enumerate(code.co_consts):
            if type(const) is int and const in slot_of:
                at.append((i, slot_of[const]))
                found.add(slot_of[const])
            elif isinstance(const, types.CodeType):
                sub = cls.locate(const, slot_of, stand_ins, found, other_ints)
                if sub is None:
                    return None
                if sub.at or sub.inner:
                    inner.append((i, sub))
            else:
                ints = _ints_in(const)
                if not stand_ins.isdisjoint(ints):
                    return None
                other_ints.update(ints)
        return cls(code, tuple(at), tuple(inner))


def _ints_in(const: Any) -> set[int]:
    """The int constants in a constant (tuples and frozensets opened; bools are not ints here)."""
    if type(const) is int:
        return {const}
    if type(const) in (tuple, frozenset):
        out: set[int] = set()
        for item in const:
            out |= _ints_in(item)
        return out
    return set()


class _CellCodes:
    """The located code of a template's body and trailing expression."""

    __slots__ = ("body", "last", "other_ints")

    def __init__(self, body: _CodeSlots | None, last: _CodeSlots | None, other_ints: frozenset[int]) -> None:
        self.body = body
        self.last = last
        self.other_ints = other_ints  # compile() would merge a slot value equal to one of these

    @classmethod
    def build(cls, template: _Template) -> _CellCodes | None:
        """Compile ``template`` with two sets of stand-ins for its slots and keep the first
        where that is the cell's code for any values. It is, when (1) every slot sits where
        ``compile`` just loads it (_PLAIN_LOADS), (2) each stand-in of the first compile is a
        constant of its own and every slot has one, and (3) the first code with the second
        set copied in is equal (==: bytecode, constants by type and value, names, positions,
        nested code) to the second compile: then no constant, instruction or position
        depends on the values but those constants. Anything else gives None (no copies)."""
        parents = _slot_parents(template)
        if any(not parents.get(id(node)) or not parents[id(node)] <= _PLAIN_LOADS for _, node in template.slots):
            return None
        nodes = [node for _, node in template.slots]
        kept = [node.value for node in nodes]
        first, second = _stand_ins(len(nodes), 0), _stand_ins(len(nodes), 1)
        try:
            with warnings.catch_warnings():  # the cell's own compile has shown its warnings
                warnings.simplefilter("ignore")
                compiled = []
                for values in (first, second):
                    for node, value in zip(nodes, values):
                        node.value = value
                    compiled.append(template.compile())
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return None
        finally:
            for node, value in zip(nodes, kept):
                node.value = value
        slot_of = {value: slot for slot, value in enumerate(first)}
        stand_ins = frozenset(first) | frozenset(second)
        found: set[int] = set()
        other_ints: set[int] = set()
        located: list[_CodeSlots | None] = []
        for code, check in ((compiled[0].body, compiled[1].body), (compiled[0].last_expr, compiled[1].last_expr)):
            if code is None:
                located.append(None)
                continue
            slots = _CodeSlots.locate(code, slot_of, stand_ins, found, other_ints)
            if slots is None or slots.fill(second) != check:
                return None
            located.append(slots)
        if len(found) != len(nodes):
            return None
        return cls(located[0], located[1], frozenset(other_ints))


def _slot_parents(template: _Template) -> dict[int, set[tuple[type[ast.AST], str]]]:
    """Every (parent type, field) holding a slot node of ``template``, by node id (a
    rewrite may have put one node in two places)."""
    wanted = {id(node) for _, node in template.slots}
    out: dict[int, set[tuple[type[ast.AST], str]]] = {}
    for parent in _nodes(template.body, template.last):
        for field in parent._fields:
            value = getattr(parent, field, None)
            for child in value if type(value) is list else (value,):
                if id(child) in wanted:
                    out.setdefault(id(child), set()).add((type(parent), field))
    return out


#: The worker's cache (one worker per process; the policy does not change while it runs).
WORKER_SHAPES = ShapeCache()


def _lru_put(entries: dict[Any, Any], key: Any, value: Any, size: int) -> None:
    if size <= 0:
        return
    entries.pop(key, None)
    if len(entries) >= size:
        entries.pop(next(iter(entries)))
    entries[key] = value
