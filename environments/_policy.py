"""The language policy of the sandbox: what model-written code may name and touch.

Runs inside the worker (imported as a top-level module; standard library and
RestrictedPython only). RestrictedPython rewrites the code so that every
attribute read, item read, iteration, attribute/item write and import goes
through the guard functions defined here.

The rule is "ordinary programming passes, the way out of the namespace does not":
classes, ``super()``, special methods, private (``_x``) names, ``nonlocal``,
``match``, generators and annotations work as in CPython. Refused are dunder
attributes of objects the sandbox did not create (``().__class__``,
``f.__globals__``), attributes that open frames or code objects (``gi_frame``,
``tb_frame`` ...), private attributes of foreign objects (``random._os``),
modules outside the allowlist (also as attributes: ``calendar.sys``), and the
functions of allowed modules that read or write attributes by names the caller
chooses with the real ``getattr``/``setattr``/``eval`` (replaced by guarded
versions or refused, see ``_REPLACED_MODULE_ATTRS`` and ``_DENIED_MODULE_ATTRS``).

The policy is one layer; the worker also runs as an unprivileged user with OS
limits, no network and (where the kernel allows) a seccomp filter, so a hole
here is contained by the next layer.
"""

from __future__ import annotations

import _string  # type: ignore[import-not-found]
import abc
import ast
import builtins
import collections
import copy
import enum
import importlib
import operator
import pprint
import re
import string
import sys
import types
from collections.abc import Callable
from typing import Any

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
    "abc", "array", "base64", "bisect", "calendar", "cmath", "collections", "collections.abc",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "enum", "fnmatch",
    "fractions", "functools", "graphlib", "hashlib", "heapq", "html", "itertools", "json", "math",
    "numbers", "operator", "pprint", "random", "re", "secrets", "shlex", "statistics", "string",
    "struct", "textwrap", "time", "typing", "unicodedata", "uuid", "zlib",
)
# Loaded lazily by allowed modules (datetime.strptime, str.encode(...)); pre-import
# them for the same reason. C code imports them through the frame's builtins, i.e.
# through guarded_import, which therefore lets these names through; model code
# cannot name them (their attributes are private or harmless encodings).
_PRELOAD_EXTRA = (
    "_strptime", "encodings.latin_1", "encodings.ascii", "encodings.utf_16",
    "encodings.utf_32", "encodings.cp1252", "encodings.idna", "encodings.unicode_escape",
    "encodings.raw_unicode_escape", "encodings.utf_8_sig", "encodings.punycode",
    "encodings.base64_codec", "encodings.hex_codec",
)
# `from __future__ import annotations` is a compiler directive that also runs an import.
_FUTURE = "__future__"

#: Attributes of allowed modules that are refused. Keyed by the module's name, so
#: they are refused on every path to the module (``typing.functools.wraps`` too).
_DENIED_MODULE_ATTRS: dict[str, frozenset[str]] = {
    # singledispatch.register evaluates string annotations with the real builtins
    "functools": frozenset({"singledispatch", "singledispatchmethod"}),
    "string": frozenset({"Formatter"}),  # get_field walks attributes with the real getattr
    # get_type_hints eval()s string annotations with the real builtins; the metaclasses
    # build classes from a dict (any dunder, isinstance that lies)
    "typing": frozenset({"get_type_hints", "ABCMeta", "NamedTupleMeta"}),
    # make_dataclass: any bases, namespace and field names (they end up in exec'd source)
    "dataclasses": frozenset({"make_dataclass"}),
    "enum": frozenset({"EnumType", "EnumMeta"}),
    # ABCMeta builds classes from a dict; update_abstractmethods writes to any class
    "abc": frozenset({"ABCMeta", "update_abstractmethods"}),
    # they assign sys.stdout / call os.chdir; MethodType and GenericAlias come from `types`
    "contextlib": frozenset({"redirect_stdout", "redirect_stderr", "chdir", "MethodType", "GenericAlias"}),
    # the copy module's view of copyreg's global table: writing it changes every copy
    "copy": frozenset({"dispatch_table"}),
    # shlex.shlex opens files named by `source` lines and reads sys.stdin
    "shlex": frozenset({"shlex"}),
    # uuid1/getnode run ifconfig & co. to find a MAC address
    "uuid": frozenset({"uuid1", "getnode"}),
}

_BLOCKED_ATTRS = frozenset(INSPECT_ATTRIBUTES) | {
    "tb_frame", "tb_next", "f_back", "f_builtins", "f_code", "f_globals", "f_locals",
    "f_trace", "co_code", "gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code",
    "cr_await", "cr_origin", "ag_frame", "ag_code", "ag_await",
}
#: Read-only dunders that only name things, readable on any object; models use
#: ``type(x).__name__`` a lot.
SAFE_DUNDERS = frozenset({"__name__", "__qualname__", "__doc__", "__module__"})
#: Dunders model code may assign, on objects it may write (its own classes,
#: instances and functions): what ``functools.wraps`` copies.
WRITABLE_DUNDERS = frozenset({"__name__", "__qualname__", "__doc__"})
#: Special methods a class of the sandbox may define (``def __repr__``) and that
#: the sandbox may read on its own objects and through ``super()``. Left out on
#: purpose: generic attribute access (``__getattribute__``, ``__setattr__``,
#: ``__delattr__``: a bound one reads/writes any name, e.g. ``__class__``),
#: pickling (``__reduce__``, ``__getstate__`` ...: copy feeds their result to
#: trusted code), ``__subclasshook__`` (makes isinstance lie), ``__del__`` (runs at
#: garbage collection, outside the cell).
DEFINABLE_DUNDERS = frozenset({
    "__init__", "__new__", "__post_init__", "__repr__", "__str__", "__format__", "__bytes__",
    "__hash__", "__bool__", "__len__", "__length_hint__", "__iter__", "__next__", "__reversed__",
    "__contains__", "__getitem__", "__setitem__", "__delitem__", "__missing__", "__enter__",
    "__exit__", "__call__", "__getattr__", "__get__", "__set__", "__delete__", "__set_name__",
    "__init_subclass__", "__class_getitem__", "__copy__", "__deepcopy__", "__dir__",
    "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__",
    "__neg__", "__pos__", "__abs__", "__invert__", "__int__", "__float__", "__complex__",
    "__index__", "__round__", "__trunc__", "__floor__", "__ceil__", "__divmod__", "__rdivmod__",
    *(f"__{p}{op}__" for op in ("add", "sub", "mul", "matmul", "truediv", "floordiv", "mod", "pow",
                                "lshift", "rshift", "and", "xor", "or") for p in ("", "r", "i")),
})
#: Class-body names that are data, not methods.
_CLASS_DATA_DUNDERS = frozenset({"__slots__", "__match_args__"})
#: Dunders readable on the sandbox's own objects: the special methods, plus
#: ``__class__`` and ``__dict__`` of its instances (not of its classes: a class's
#: ``__class__`` is the real metaclass, its ``__dict__`` holds ``__annotations__``
#: and ``__dataclass_fields__``, which dataclasses turns into exec'd source).
OWN_DUNDERS = DEFINABLE_DUNDERS | _CLASS_DATA_DUNDERS | {"__class__", "__dict__", "__members__"}
_INSTANCE_ONLY_DUNDERS = frozenset({"__class__", "__dict__"})
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


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def preload_modules() -> None:
    for name in ALLOWED_MODULES + _PRELOAD_EXTRA:
        importlib.import_module(name)
    _harden_copy()
    _build_module_proxies()
    # Trusted code looks up a class's module: dataclasses reads sys.modules[cls.__module__]
    # (and exec's its generated methods there). An empty module, not the namespace.
    sys.modules.setdefault(SANDBOX_MODULE, types.ModuleType(SANDBOX_MODULE))


# -- whose object is it ---------------------------------------------------------------


def _defined_in_sandbox(obj: Any) -> bool:
    """A class of the sandbox, or an instance of one. Classes get ``__module__``
    from the globals' ``__name__`` (which sandbox code cannot rebind)."""
    cls = obj if isinstance(obj, type) else type(obj)
    return getattr(cls, "__module__", None) == SANDBOX_MODULE


def _sandbox_function(obj: Any) -> bool:
    return type(obj) is types.FunctionType and obj.__globals__.get("__name__") == SANDBOX_MODULE


def _private_allowed(obj: Any, name: str) -> bool:
    """``obj._x``: only where the sandbox put ``_x`` itself (its instance dict, or
    a class of its own that comes first in the MRO), never a private attribute of
    a module or a class of the host (``random._os``, ``Enum._missing_``)."""
    if type(obj) is super:
        start = obj.__self__
        if start is None or not _defined_in_sandbox(start):
            return False
        mro = obj.__self_class__.__mro__
        mro = mro[mro.index(obj.__thisclass__) + 1:]
    elif not _defined_in_sandbox(obj):
        return False
    else:
        mro = obj.__mro__ if isinstance(obj, type) else type(obj).__mro__
    for cls in mro:
        if name in cls.__dict__:
            return getattr(cls, "__module__", None) == SANDBOX_MODULE
    return True  # the instance's own attribute, or missing (AttributeError / the class's __getattr__)


def _dunder_allowed(obj: Any, name: str) -> bool:
    if name not in OWN_DUNDERS:
        return False
    if type(obj) is super:  # super().__init__(...): the object behind it must be the sandbox's
        start = obj.__self__
        return start is not None and name not in _INSTANCE_ONLY_DUNDERS and _defined_in_sandbox(start)
    if isinstance(obj, type) and name in _INSTANCE_ONLY_DUNDERS:
        return False
    return _defined_in_sandbox(obj)


# -- attribute access -----------------------------------------------------------------


class _SafeFormatter(string.Formatter):
    """``str.format`` whose ``{0.attr}`` / ``{0[key]}`` fields go through the guards."""

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        first, rest = _string.formatter_field_name_split(field_name)
        obj = self.get_value(first, args, kwargs)
        for is_attr, key in rest:
            obj = guarded_getattr(obj, key) if is_attr else guarded_getitem(obj, key)
        return obj, first


_FORMATTER = _SafeFormatter()


def _safe_format(template: str, /, *args: Any, **kwargs: Any) -> str:
    return _FORMATTER.vformat(template, args, kwargs)


def _safe_format_map(template: str, mapping: Any, /) -> str:
    return _FORMATTER.vformat(template, (), mapping)


_MISSING = object()


def _refuse_attr(obj: Any, name: str) -> None:
    if _is_dunder(name):
        raise SandboxPolicyError(
            f'access to "{name}" is not allowed: dunder attributes are readable only on the '
            "sandbox's own classes and objects (and not all of them)")
    raise SandboxPolicyError(
        f'access to "{name}" is not allowed: names starting with "_" are private to the object that set them')


def guarded_getattr(obj: Any, name: str, default: Any = _MISSING) -> Any:
    """``getattr`` for sandboxed code (also installed as the ``getattr`` builtin)."""
    if type(name) is not str:
        raise TypeError("attribute name must be a string")
    if name in SAFE_DUNDERS:
        return getattr(obj, name) if default is _MISSING else getattr(obj, name, default)
    if name.startswith("_") and name != "_":
        if not (_dunder_allowed(obj, name) if _is_dunder(name) else _private_allowed(obj, name)):
            _refuse_attr(obj, name)
    elif name in _BLOCKED_ATTRS or isinstance(obj, _OPAQUE_TYPES):
        raise SandboxPolicyError(f'access to "{name}" is not allowed: frames and code objects are off limits')
    if name in ("format", "format_map") and (
        isinstance(obj, str) or (isinstance(obj, type) and issubclass(obj, str))
    ):
        if isinstance(obj, str):
            method = _safe_format if name == "format" else _safe_format_map
            return lambda *a, **k: method(obj, *a, **k)
        return _safe_format if name == "format" else _safe_format_map
    if isinstance(obj, types.ModuleType):
        modname = obj.__name__
        if name in _DENIED_MODULE_ATTRS.get(modname, ()):
            raise SandboxPolicyError(f"{modname}.{name} is not available in the sandbox")
        replaced = _REPLACED_MODULE_ATTRS.get(modname)
        if replaced and name in replaced:
            return replaced[name]
    if isinstance(obj, string.Formatter) or (isinstance(obj, type) and issubclass(obj, string.Formatter)):
        raise SandboxPolicyError("string.Formatter is not available in the sandbox; use str.format or f-strings")
    if name == "register" and isinstance(obj, abc.ABCMeta):
        # a registered class passes isinstance/issubclass for every ABC check in the worker
        raise SandboxPolicyError("ABC.register is not available in the sandbox; subclass the ABC instead")
    try:
        value = getattr(obj, name)
    except AttributeError:
        if default is _MISSING:
            raise
        return default
    if isinstance(value, types.ModuleType):
        _check_module(value)
    return value


def _check_module(module: types.ModuleType) -> None:
    if module.__name__ not in ALLOWED_MODULES:
        raise SandboxPolicyError(f'module "{module.__name__}" is not available in the sandbox')


def guarded_getitem(obj: Any, key: Any) -> Any:
    value = obj[key]
    if type(value) is types.ModuleType:  # e.g. a module kept in some dict
        _check_module(value)
    return value


def guarded_hasattr(obj: Any, name: str) -> bool:
    try:
        guarded_getattr(obj, name)
    except (AttributeError, SandboxPolicyError):
        return False
    return True


# -- writes -----------------------------------------------------------------------------

_WRITABLE_TYPES = (dict, list, set, bytearray, collections.deque)


def guarded_write(obj: Any) -> Any:
    """Target of every ``obj.attr = v`` / ``obj[k] = v`` / ``del``: containers and
    the sandbox's own classes, instances and functions only (no monkeypatching
    modules, the context directory or host functions)."""
    if isinstance(obj, _WRITABLE_TYPES) or _defined_in_sandbox(obj) or _sandbox_function(obj):
        return obj
    raise SandboxPolicyError(f"cannot modify {type(obj).__name__} objects in the sandbox")


def _check_set_name(name: Any, verb: str) -> None:
    if type(name) is not str or (
        name.startswith("_") and name != "_" and _is_dunder(name) and name not in WRITABLE_DUNDERS
    ):
        raise SandboxPolicyError(f'{verb} "{name}" is not allowed')


def _guarded_setattr(obj: Any, name: str, value: Any) -> None:
    _check_set_name(name, "setting")
    setattr(guarded_write(obj), name, value)


def _guarded_delattr(obj: Any, name: str) -> None:
    _check_set_name(name, "deleting")
    delattr(guarded_write(obj), name)


_INPLACE_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "+=": operator.iadd, "-=": operator.isub, "*=": operator.imul, "/=": operator.itruediv,
    "//=": operator.ifloordiv, "%=": operator.imod, "**=": operator.ipow,
    "<<=": operator.ilshift, ">>=": operator.irshift, "&=": operator.iand,
    "|=": operator.ior, "^=": operator.ixor, "@=": operator.imatmul,
}


def _inplacevar(op: str, x: Any, y: Any) -> Any:
    return _INPLACE_OPS[op](x, y)


# -- classes ----------------------------------------------------------------------------

_BASE_MODULES = frozenset({m.partition(".")[0] for m in ALLOWED_MODULES} | {"builtins", SANDBOX_MODULE})


def _check_base(base: Any) -> None:
    if not isinstance(base, type):
        return  # type() itself reports it
    if issubclass(base, type):
        raise SandboxPolicyError("metaclasses cannot be defined in the sandbox")
    if issubclass(base, (super, string.Formatter, pprint.PrettyPrinter)):
        # a subclass instance would count as the sandbox's own object while it
        # proxies a foreign one (super), walks attributes unguarded (Formatter) or
        # holds the worker's stdout in its instance dict (PrettyPrinter._stream)
        raise SandboxPolicyError(f"{base.__name__} cannot be subclassed in the sandbox")
    module = getattr(base, "__module__", None)
    if type(module) is not str or module.partition(".")[0] not in _BASE_MODULES:
        raise SandboxPolicyError(
            f"{base.__name__} cannot be subclassed in the sandbox: it is not a class of an allowed module")


def _metaclass_of(bases: tuple[Any, ...]) -> Any:
    winner: Any = type
    for base in bases:
        _check_base(base)
        meta = type(base)
        if issubclass(winner, meta):
            continue
        if issubclass(meta, winner):
            winner = meta
        else:
            raise TypeError("metaclass conflict: the metaclass of a derived class must be a (non-strict) "
                            "subclass of the metaclasses of all its bases")
    return winner


class _ClassStatement:
    """What ``class`` statements use as metaclass (RestrictedPython adds
    ``metaclass=__metaclass__`` to each): the bases' own metaclass, found as
    Python does, after refusing bases that would give the class powers a class
    statement must not have (see :func:`_check_base`)."""

    def __prepare__(self, name: str, bases: tuple[Any, ...], **kwargs: Any) -> Any:
        meta = _metaclass_of(bases)
        return meta.__prepare__(name, bases, **kwargs)

    def __call__(self, name: str, bases: tuple[Any, ...], namespace: Any, **kwargs: Any) -> Any:
        return _metaclass_of(bases)(name, bases, namespace, **kwargs)


_CLASS_STATEMENT = _ClassStatement()


def _match_class(cls: Any) -> None:
    """Checked before a ``match`` whose cases have class patterns: CPython reads the
    keyword names and ``cls.__match_args__`` on the subject with the real getattr."""
    if not isinstance(cls, type):
        return  # the match raises TypeError itself
    if type(cls) not in (type, enum.EnumType) or cls is object or issubclass(
        cls, (types.ModuleType, string.Formatter, *_OPAQUE_TYPES)
    ):
        # isinstance must not lie (ABCs, protocols) and the subject must not be any object at all
        raise SandboxPolicyError(f"{cls.__name__} cannot be used in a class pattern in the sandbox")
    names = getattr(cls, "__match_args__", ())
    if type(names) is not tuple:
        return  # the match raises TypeError itself
    for name in names:
        if type(name) is not str:
            continue
        private = name.startswith("_") and name != "_"
        if (private and (_is_dunder(name) or not _private_allowed(cls, name))) or name in _BLOCKED_ATTRS or (
            name in ("format", "format_map") and issubclass(cls, str)
        ):
            raise SandboxPolicyError(f"{cls.__name__}.__match_args__ names {name!r}, which is not readable")


# -- safer versions of module functions that take attribute names -------------------------

_WRAPS_ASSIGNED = ("__module__", "__name__", "__qualname__", "__doc__")


def _update_wrapper(wrapper: Any, wrapped: Any, assigned: Any = _WRAPS_ASSIGNED, updated: Any = ("__dict__",)) -> Any:
    """functools.update_wrapper that copies only names: not ``__dict__`` (it would
    copy a host class's methods or a module's globals), not ``__wrapped__``."""
    target = guarded_write(wrapper)
    for name in assigned:
        if name not in _WRAPS_ASSIGNED:
            raise SandboxPolicyError(f'update_wrapper/wraps can copy only {", ".join(_WRAPS_ASSIGNED)}, not {name!r}')
        try:
            value = getattr(wrapped, name)
        except AttributeError:
            continue
        if name != "__module__":  # a class's __module__ says whether it is the sandbox's
            setattr(target, name, value)
    for name in updated:
        if name != "__dict__":
            raise SandboxPolicyError(f"update_wrapper/wraps cannot update {name!r} in the sandbox")
    return wrapper


def _wraps(wrapped: Any, assigned: Any = _WRAPS_ASSIGNED, updated: Any = ("__dict__",)) -> Callable[[Any], Any]:
    def decorator(wrapper: Any) -> Any:
        return _update_wrapper(wrapper, wrapped, assigned, updated)

    return decorator


def _own_class_decorator(real: Callable[..., Any], what: str) -> Callable[..., Any]:
    """A class decorator that writes to the class: only for the sandbox's classes
    (``dataclass(type(context))`` would rewrite a class of the worker)."""

    def check(cls: Any) -> Any:
        if not (isinstance(cls, type) and _defined_in_sandbox(cls)):
            raise SandboxPolicyError(f"{what} works on classes defined in the sandbox only")
        return cls

    def decorator(cls: Any = None, /, **kwargs: Any) -> Any:
        if cls is None:
            return lambda c: real(check(c), **kwargs)
        return real(check(cls), **kwargs) if kwargs else real(check(cls))

    decorator.__name__ = decorator.__qualname__ = getattr(real, "__name__", what)
    decorator.__doc__ = getattr(real, "__doc__", None)
    return decorator


def _attrgetter(*names: str) -> Callable[[Any], Any]:
    for name in names:
        if type(name) is not str:
            raise TypeError("attribute name must be a string")
    paths = [name.split(".") for name in names]

    def get(obj: Any) -> Any:
        values = []
        for path in paths:
            value = obj
            for part in path:
                value = guarded_getattr(value, part)
            values.append(value)
        return values[0] if len(values) == 1 else tuple(values)

    return get


def _methodcaller(name: str, /, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
    if type(name) is not str:
        raise TypeError("method name must be a string")
    return lambda obj: guarded_getattr(obj, name)(*args, **kwargs)


def _setitem(obj: Any, key: Any, value: Any) -> None:
    guarded_write(obj)[key] = value


def _delitem(obj: Any, key: Any) -> None:
    del guarded_write(obj)[key]


#: Functions of allowed modules replaced by guarded versions, on every path.
_REPLACED_MODULE_ATTRS: dict[str, dict[str, Any]] = {
    "functools": {"update_wrapper": _update_wrapper, "wraps": _wraps},
    "contextlib": {"wraps": _wraps},
    "operator": {"attrgetter": _attrgetter, "methodcaller": _methodcaller, "getitem": guarded_getitem,
                 "setitem": _setitem, "delitem": _delitem},
}
_MODULE_PROXIES: dict[str, types.ModuleType] = {}


def _build_module_proxies() -> None:
    """``from functools import wraps`` reads the attribute natively (IMPORT_FROM), so
    such imports get a copy of the module with the replacements in place."""
    import dataclasses
    import functools

    _REPLACED_MODULE_ATTRS["dataclasses"] = {"dataclass": _own_class_decorator(dataclasses.dataclass, "dataclass")}
    _REPLACED_MODULE_ATTRS["functools"]["total_ordering"] = _own_class_decorator(
        functools.total_ordering, "total_ordering")
    for name in set(_REPLACED_MODULE_ATTRS) | set(_DENIED_MODULE_ATTRS):
        real = sys.modules[name]
        proxy = types.ModuleType(name, real.__doc__)
        proxy.__dict__.update(
            (k, v) for k, v in real.__dict__.items() if k not in _DENIED_MODULE_ATTRS.get(name, ()))
        proxy.__dict__.update(_REPLACED_MODULE_ATTRS.get(name, {}))
        _MODULE_PROXIES[name] = proxy


def _harden_copy() -> None:
    """copy.copy/deepcopy rebuild an object from its ``__reduce_ex__`` result with
    the real setattr and ``__dict__.update``. With a class of the sandbox the
    result is the model's choice (a ``__new__`` that returns a module, ``getattr``
    as the rebuilding function for a bound method), so the rebuild is checked: the
    new object must be of the original's type or the sandbox's own, and the
    rebuild reads attributes with the guards. Patched in the worker's copy module
    because dataclasses.asdict and others call it too."""
    original = copy._reconstruct  # type: ignore[attr-defined]

    def _reconstruct(x: Any, memo: Any, func: Any, args: Any, state: Any = None, listiter: Any = None,
                     dictiter: Any = None, *, deepcopy: Any = copy.deepcopy) -> Any:
        if func is getattr:
            func = guarded_getattr
        checked_args = tuple(args)

        def build(*a: Any) -> Any:
            y = func(*a)
            if type(y) is not type(x) and not _defined_in_sandbox(y):
                raise copy.Error(f"copying {type(x).__name__} gave a {type(y).__name__}; refused in the sandbox")
            return y

        if state is not None and type(state) is tuple and len(state) == 2 and type(state[1]) is dict:
            for key in state[1]:
                _check_set_name(key, "copying")
        return original(x, memo, build, checked_args, state, listiter, dictiter, deepcopy=deepcopy)

    copy._reconstruct = _reconstruct  # type: ignore[attr-defined]


# -- imports ----------------------------------------------------------------------------


def guarded_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
    if level != 0:
        raise ImportError("relative imports are not available in the sandbox")
    if name in _PRELOAD_EXTRA and not fromlist:
        return sys.modules[name.partition(".")[0]]
    if name == _FUTURE and fromlist:
        return sys.modules[_FUTURE]
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
        return _MODULE_PROXIES.get(name, module)
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
        # super() proxies the sandbox's own objects only (see _dunder_allowed); object's
        # dunders are foreign like every other host class's
        "super", "object",
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
    the text for RestrictedPython's ``printed`` variable.

    What it keeps is capped at ``max_chars`` (the worker sets it to its output
    limit) and the rest only counted: a print loop must not grow the worker's
    memory without bound, and the model never sees more than the limit anyway.
    """

    max_chars = 20_000

    def __init__(self, _getattr_: Any = None) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.dropped = 0

    def write(self, text: str) -> None:
        room = self.max_chars - self.size
        if room >= len(text):
            self.parts.append(text)
            self.size += len(text)
        else:
            if room > 0:
                self.parts.append(text[:room])
                self.size += room
            self.dropped += len(text) - max(room, 0)
        sys.stdout.write(text)

    def __call__(self) -> str:
        text = "".join(self.parts)
        if self.dropped:
            text += f"\n... [printed output truncated: {self.dropped:,} more characters not kept]\n"
        return text

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
        "__metaclass__": _CLASS_STATEMENT,
        "_getattr_": guarded_getattr,
        "_getitem_": guarded_getitem,
        "_getiter_": iter,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "_unpack_sequence_": guarded_unpack_sequence,
        "_write_": guarded_write,
        "_inplacevar_": _inplacevar,
        "_apply_": lambda f, *a, **k: f(*a, **k),
        "_print_": PrintCollector,
        "_match_class_": _match_class,
    }


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
    "_inplacevar_", "_apply_", "_print_", "_print", "_match_class_",
})
_TMP_NAME = re.compile(r"_tmp\d+\Z")
#: Values that are always built-in objects, never the sandbox's own: a dunder read
#: on one of them is refused while compiling (``().__class__``).
_LITERALS = (ast.Constant, ast.List, ast.Tuple, ast.Set, ast.Dict, ast.JoinedStr, ast.ListComp, ast.SetComp,
             ast.DictComp, ast.GeneratorExp, ast.Lambda)
_NO_ASYNC = "is not available in the sandbox: there is no event loop (asyncio is not importable); use plain functions"


class _Transformer(RestrictingNodeTransformer):
    """RestrictedPython's rewrite, with the language of real model code let through
    (see the module docstring): private names, the dunders of DEFINABLE_DUNDERS,
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
        classes: dict[str, ast.expr] = {}
        for case in node.cases:
            for sub in ast.walk(case.pattern):
                if isinstance(sub, ast.MatchClass):
                    classes.setdefault(ast.dump(sub.cls), sub.cls)
        checks = [ast.Expr(_call("_match_class_", self.visit(_copy_expr(cls)))) for cls in classes.values()]
        node = self.node_contents_visit(node)
        for check in checks:
            copy_locations(check, node)
            ast.fix_missing_locations(check)
        return [*checks, node] if checks else node

    def visit_match_case(self, node: ast.match_case) -> Any:
        return self.node_contents_visit(node)

    def visit_MatchClass(self, node: ast.MatchClass) -> Any:
        self._check_dotted(node.cls)
        for name in node.kwd_attrs:
            self._check_pattern_attr(node, name)
        node.patterns = [self.visit(p) for p in node.patterns]
        node.kwd_patterns = [self.visit(p) for p in node.kwd_patterns]
        return node

    def visit_MatchValue(self, node: ast.MatchValue) -> Any:
        self._check_dotted(node.value)
        return node

    def visit_MatchSingleton(self, node: ast.MatchSingleton) -> Any:
        return node

    def visit_MatchSequence(self, node: ast.MatchSequence) -> Any:
        return self.node_contents_visit(node)

    def visit_MatchOr(self, node: ast.MatchOr) -> Any:
        return self.node_contents_visit(node)

    def visit_MatchMapping(self, node: ast.MatchMapping) -> Any:
        for key in node.keys:
            self._check_dotted(key)
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
