"""The language policy of the sandbox: what model-written code may name and touch.

Runs inside the worker (imported as a top-level module; standard library and
RestrictedPython only). RestrictedPython rewrites the code so that every
attribute read, item read, iteration, attribute/item write and import goes
through the guard functions defined here; the compile step already rejects any
name or attribute starting with ``_``. The guards add what the compiler cannot
see: attribute names that open frames or code objects without an underscore
(``gi_frame``, ``f_globals`` ...), modules reachable as attributes of allowed
modules (``statistics.sys``), and format strings that walk attributes.

The policy is one layer; the worker also runs as an unprivileged user with OS
limits, no network and (where the kernel allows) a seccomp filter, so a hole
here is contained by the next layer.
"""

from __future__ import annotations

import _string  # type: ignore[import-not-found]
import ast
import builtins
import collections
import importlib
import operator
import re
import string
import sys
import types
from collections.abc import Callable
from typing import Any

from RestrictedPython import compile_restricted_eval, compile_restricted_exec
from RestrictedPython.Guards import (
    guarded_iter_unpack_sequence,
    guarded_unpack_sequence,
    safe_builtins,
)
from RestrictedPython.transformer import INSPECT_ATTRIBUTES, RestrictingNodeTransformer, copy_locations

SANDBOX_MODULE = "repl"
FILENAME = "<repl>"

#: Modules model code may import. They are imported before the worker drops its
#: privileges (afterwards it could not read the standard library), so an import
#: inside the sandbox is a dictionary lookup.
ALLOWED_MODULES: tuple[str, ...] = (
    "base64", "bisect", "calendar", "cmath", "collections", "collections.abc", "csv",
    "datetime", "decimal", "difflib", "fnmatch", "fractions", "functools", "hashlib",
    "heapq", "html", "itertools", "json", "math", "pprint", "random", "re", "statistics",
    "string", "textwrap", "time", "unicodedata", "zlib",
)
# Loaded lazily by allowed modules (datetime.strptime, str.encode(...)); pre-import
# them for the same reason. C code imports them through the frame's builtins, i.e.
# through guarded_import, which therefore lets these names through; model code
# cannot name them (underscore names do not compile; encodings are harmless).
_PRELOAD_EXTRA = (
    "_strptime", "encodings.latin_1", "encodings.ascii", "encodings.utf_16",
    "encodings.utf_32", "encodings.cp1252", "encodings.idna", "encodings.unicode_escape",
    "encodings.raw_unicode_escape", "encodings.utf_8_sig", "encodings.punycode",
    "encodings.base64_codec", "encodings.hex_codec",
)

#: Functions of allowed modules that read or write attributes (or evaluate
#: annotations) by names the caller chooses, with the real getattr/setattr/eval:
#: each one would bypass every guard here.
_DENIED_MODULE_ATTRS: dict[str, frozenset[str]] = {
    "functools": frozenset({"update_wrapper", "wraps", "singledispatch", "singledispatchmethod"}),
    "string": frozenset({"Formatter"}),
}

_BLOCKED_ATTRS = frozenset(INSPECT_ATTRIBUTES) | {
    "tb_frame", "tb_next", "f_back", "f_builtins", "f_code", "f_globals", "f_locals",
    "f_trace", "co_code", "gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code",
    "cr_await", "cr_origin", "ag_frame", "ag_code", "ag_await",
}
#: Read-only dunders that only name things; models use ``type(x).__name__`` a lot.
SAFE_DUNDERS = frozenset({"__name__", "__qualname__", "__doc__"})
_OPAQUE_TYPES = (types.FrameType, types.CodeType, types.TracebackType)

_REFUSED_BUILTINS = {
    "open": "open() is not available in the sandbox: the input is already in `context`",
    "eval": "eval() is not available in the sandbox: write the code directly",
    "exec": "exec() is not available in the sandbox: write the code directly",
    "compile": "compile() is not available in the sandbox",
    "input": "input() is not available: there is no user at the keyboard",
    "globals": "globals() is not available in the sandbox",
    "locals": "locals() is not available in the sandbox",
    "vars": "vars() is not available in the sandbox",
    "breakpoint": "breakpoint() is not available in the sandbox",
    "help": "help() is not available in the sandbox",
    "exit": "exit() is not available: end with FINAL(answer) instead",
    "quit": "quit() is not available: end with FINAL(answer) instead",
    "memoryview": "memoryview() is not available in the sandbox",
}


class SandboxPolicyError(PermissionError):
    """Raised inside the sandbox when code does something the policy forbids."""


# Tracebacks shown to the model then read "SandboxPolicyError: ..." without a module path.
SandboxPolicyError.__module__ = "builtins"


def preload_modules() -> None:
    for name in ALLOWED_MODULES + _PRELOAD_EXTRA:
        importlib.import_module(name)


# -- attribute access -----------------------------------------------------------------


class _SafeFormatter(string.Formatter):
    """``str.format`` whose ``{0.attr}`` / ``{0[key]}`` fields go through the guards."""

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        first, rest = _string.formatter_field_name_split(field_name)
        obj = self.get_value(first, args, kwargs)
        for is_attr, key in rest:
            obj = guarded_getattr(obj, key) if is_attr else obj[key]
        return obj, first


_FORMATTER = _SafeFormatter()


def _safe_format(template: str, /, *args: Any, **kwargs: Any) -> str:
    return _FORMATTER.vformat(template, args, kwargs)


def _safe_format_map(template: str, mapping: Any, /) -> str:
    return _FORMATTER.vformat(template, (), mapping)


_MISSING = object()


def guarded_getattr(obj: Any, name: str, default: Any = _MISSING) -> Any:
    """``getattr`` for sandboxed code (also installed as the ``getattr`` builtin)."""
    if type(name) is not str:
        raise TypeError("attribute name must be a string")
    if name in SAFE_DUNDERS:
        return getattr(obj, name) if default is _MISSING else getattr(obj, name, default)
    if name.startswith("_"):
        raise SandboxPolicyError(f'access to "{name}" is not allowed: names starting with "_" are private')
    if name in _BLOCKED_ATTRS or isinstance(obj, _OPAQUE_TYPES):
        raise SandboxPolicyError(f'access to "{name}" is not allowed: frames and code objects are off limits')
    if name in ("format", "format_map") and (
        isinstance(obj, str) or (isinstance(obj, type) and issubclass(obj, str))
    ):
        if isinstance(obj, str):
            method = _safe_format if name == "format" else _safe_format_map
            return lambda *a, **k: method(obj, *a, **k)
        return _safe_format if name == "format" else _safe_format_map
    if isinstance(obj, types.ModuleType) and name in _DENIED_MODULE_ATTRS.get(obj.__name__, ()):
        raise SandboxPolicyError(f"{obj.__name__}.{name} is not available in the sandbox")
    if isinstance(obj, string.Formatter) or (isinstance(obj, type) and issubclass(obj, string.Formatter)):
        raise SandboxPolicyError("string.Formatter is not available in the sandbox; use str.format or f-strings")
    try:
        value = getattr(obj, name)
    except AttributeError:
        if default is _MISSING:
            raise
        return default
    if isinstance(value, types.ModuleType) and value.__name__ not in ALLOWED_MODULES:
        raise SandboxPolicyError(f'module "{value.__name__}" is not available in the sandbox')
    return value


def guarded_hasattr(obj: Any, name: str) -> bool:
    try:
        guarded_getattr(obj, name)
    except (AttributeError, SandboxPolicyError):
        return False
    return True


# -- writes -----------------------------------------------------------------------------

_WRITABLE_TYPES = (dict, list, set, bytearray, collections.deque)


def _defined_in_sandbox(obj: Any) -> bool:
    cls = obj if isinstance(obj, type) else type(obj)
    return getattr(cls, "__module__", None) == SANDBOX_MODULE


def guarded_write(obj: Any) -> Any:
    """Target of every ``obj.attr = v`` / ``obj[k] = v`` / ``del``: containers and
    objects of classes defined in the sandbox only (no monkeypatching modules,
    the context directory or host functions)."""
    if isinstance(obj, _WRITABLE_TYPES) or _defined_in_sandbox(obj):
        return obj
    raise SandboxPolicyError(f"cannot modify {type(obj).__name__} objects in the sandbox")


def _guarded_setattr(obj: Any, name: str, value: Any) -> None:
    if type(name) is not str or name.startswith("_"):
        raise SandboxPolicyError(f'setting "{name}" is not allowed')
    setattr(guarded_write(obj), name, value)


def _guarded_delattr(obj: Any, name: str) -> None:
    if type(name) is not str or name.startswith("_"):
        raise SandboxPolicyError(f'deleting "{name}" is not allowed')
    delattr(guarded_write(obj), name)


_INPLACE_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "+=": operator.iadd, "-=": operator.isub, "*=": operator.imul, "/=": operator.itruediv,
    "//=": operator.ifloordiv, "%=": operator.imod, "**=": operator.ipow,
    "<<=": operator.ilshift, ">>=": operator.irshift, "&=": operator.iand,
    "|=": operator.ior, "^=": operator.ixor, "@=": operator.imatmul,
}


def _inplacevar(op: str, x: Any, y: Any) -> Any:
    return _INPLACE_OPS[op](x, y)


# -- imports ----------------------------------------------------------------------------


def guarded_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
    if level != 0:
        raise ImportError("relative imports are not available in the sandbox")
    if name in _PRELOAD_EXTRA and not fromlist:
        return sys.modules[name.partition(".")[0]]
    if name not in ALLOWED_MODULES:
        allowed = ", ".join(m for m in ALLOWED_MODULES if "." not in m)
        raise ImportError(f'import of "{name}" is not allowed in the sandbox; available: {allowed}')
    module = sys.modules[name]
    for item in fromlist or ():
        if item == "*" or item.startswith("_") or item in _DENIED_MODULE_ATTRS.get(name, ()):
            raise ImportError(f'"from {name} import {item}" is not allowed in the sandbox')
        value = getattr(module, item, None)
        if isinstance(value, types.ModuleType) and value.__name__ not in ALLOWED_MODULES:
            raise ImportError(f'"{name}.{item}" is not available in the sandbox')
    if fromlist:
        return module
    return sys.modules[name.partition(".")[0]]


# -- builtins ---------------------------------------------------------------------------


def _one_arg_type(obj: Any, *rest: Any) -> Any:
    if rest:
        raise SandboxPolicyError("type() with three arguments is not allowed; use a class statement")
    cls = type(obj)
    # The type of a class is a metaclass (the real `type`), which can build classes
    # with any dunder method: hand out this function in its place.
    return _one_arg_type if issubclass(cls, type) else cls


def _refuser(message: str) -> Callable[..., Any]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise SandboxPolicyError(message)

    return refuse


def _build_builtins() -> dict[str, Any]:
    b = dict(safe_builtins)
    for name in (
        "all", "any", "ascii", "bin", "bytearray", "bytes", "dict", "dir", "enumerate",
        "filter", "format", "frozenset", "iter", "list", "map", "max", "min", "next",
        "reversed", "set", "sorted", "sum", "tuple", "zip", "property", "staticmethod",
        "classmethod", "NotImplemented", "StopAsyncIteration", "RecursionError",
        "TimeoutError", "ConnectionError", "PermissionError", "FileNotFoundError",
    ):
        b[name] = getattr(builtins, name)
    b.update(
        __import__=guarded_import,
        getattr=guarded_getattr,
        hasattr=guarded_hasattr,
        setattr=_guarded_setattr,
        delattr=_guarded_delattr,
        type=_one_arg_type,
        SandboxPolicyError=SandboxPolicyError,
    )
    for name, message in _REFUSED_BUILTINS.items():
        b[name] = _refuser(message)
    return b


class PrintCollector:
    """Target of RestrictedPython's rewritten ``print``: writes to ``sys.stdout``
    (the worker points it at the capped output of the current exec) and keeps
    the text for RestrictedPython's ``printed`` variable."""

    def __init__(self, _getattr_: Any = None) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> None:
        self.parts.append(text)
        sys.stdout.write(text)

    def __call__(self) -> str:
        return "".join(self.parts)

    def _call_print(self, *objects: Any, **kwargs: Any) -> None:
        target = kwargs.get("file")
        if target is None:
            kwargs["file"] = self
        else:
            guarded_getattr(target, "write")
        print(*objects, **kwargs)


def make_namespace() -> dict[str, Any]:
    """A fresh global namespace for sandboxed code."""
    return {
        "__builtins__": _build_builtins(),
        "__name__": SANDBOX_MODULE,
        "__metaclass__": type,
        "_getattr_": guarded_getattr,
        "_getitem_": lambda obj, key: obj[key],
        "_getiter_": iter,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "_unpack_sequence_": guarded_unpack_sequence,
        "_write_": guarded_write,
        "_inplacevar_": _inplacevar,
        "_apply_": lambda f, *a, **k: f(*a, **k),
        "_print_": PrintCollector,
    }


# -- compiling --------------------------------------------------------------------------


class CompiledCell:
    """One cell of model code: the statements, plus a trailing expression whose
    value is shown like in a notebook (``None`` is not shown)."""

    __slots__ = ("body", "last_expr")

    def __init__(self, body: types.CodeType | None, last_expr: types.CodeType | None) -> None:
        self.body = body
        self.last_expr = last_expr


class _Transformer(RestrictingNodeTransformer):
    """RestrictedPython's policy, plus reading the names in SAFE_DUNDERS, minus
    annotations (string annotations are evaluated by trusted code with plain eval)."""

    def visit_arg(self, node: ast.arg) -> Any:
        node.annotation = None
        return super().visit_arg(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> Any:
        node.returns = None
        return super().visit_FunctionDef(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> Any:
        if node.value is None:
            return None  # a bare annotation binds nothing
        assign = ast.Assign(targets=[node.target], value=node.value)
        copy_locations(assign, node)
        return self.visit(assign)

    def visit_Attribute(self, node: ast.Attribute) -> Any:
        if node.attr in SAFE_DUNDERS and isinstance(node.ctx, ast.Load):
            node = self.node_contents_visit(node)
            call = ast.Call(func=ast.Name("_getattr_", ast.Load()), args=[node.value, ast.Constant(node.attr)],
                            keywords=[])
            copy_locations(call, node)
            return call
        return super().visit_Attribute(node)


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
    body = _restricted(compile_restricted_exec, body_tree) if body_tree is not None else None
    last_code = _restricted(compile_restricted_eval, last) if last is not None else None
    if shapes is not None and text_key is not None and ints is not None:
        shapes.remember(*text_key, _Template(body_tree, last), ints)
    return CompiledCell(body, last_code)


def _is_print_call(node: ast.expr) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"


def _restricted(compiler: Callable[..., Any], tree: ast.AST) -> types.CodeType:
    try:
        result = compiler(tree, FILENAME, policy=_Transformer)
    except (RecursionError, MemoryError) as e:
        raise PolicyViolation(f"the code is too deeply nested to compile ({type(e).__name__})") from None
    if result.errors:
        raise PolicyViolation("\n".join(result.errors))
    return result.code


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

# The flags RestrictedPython's compile inherits (its module uses `from __future__ import
# annotations` and calls compile() with dont_inherit=False); recompiling a kept tree
# must give the same code object.
_COMPILE_FLAGS = importlib.import_module("__future__").annotations.compiler_flag

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
    them, one per variable digit run of its text."""

    __slots__ = ("body", "last", "slots")

    def __init__(self, body: ast.Module | None, last: ast.Expression | None) -> None:
        self.body = body
        self.last = last
        self.slots: list[tuple[int, ast.Constant]] = []

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
        for i, node in template.slots:
            node.value = int(runs[i])
        return template.compile()

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
        _lru_put(self._templates, key, (template, tuple(fixed)), self.size)


#: The worker's cache (one worker per process; the policy does not change while it runs).
WORKER_SHAPES = ShapeCache()


def _lru_put(entries: dict[Any, Any], key: Any, value: Any, size: int) -> None:
    if size <= 0:
        return
    entries.pop(key, None)
    if len(entries) >= size:
        entries.pop(next(iter(entries)))
    entries[key] = value
