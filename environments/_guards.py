"""The language policy of the sandbox, at run time: the guards model-written code runs through.

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

This module is what runs while model code runs (tables, guards, safe module proxies,
builtins, ``make_namespace``); compiling a cell is in ``_policy``, which imports from
here, so the per-access guards stay apart from the once-per-cell check.
"""

from __future__ import annotations

import _string  # type: ignore[import-not-found]
import abc
import array
import builtins
import collections
import copy
import dataclasses
import enum
import hashlib
import importlib
import importlib.util
import keyword
import operator
import pprint
import string
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

from RestrictedPython.Guards import (
    guarded_iter_unpack_sequence,
    guarded_unpack_sequence,
    safe_builtins,
)
from RestrictedPython.transformer import INSPECT_ATTRIBUTES

SANDBOX_MODULE = "repl"
#: The file name cells are compiled under (``_policy.FILENAME``): code of it went through the rewrite.
CELL_FILENAME = "<repl>"

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
    # global_enum writes members into sys.modules[cls.__module__], a module the functional API names;
    # pickle_by_enum_name(member, proto) returns ``(getattr, ...)``: the real getattr, in a call's
    # result no guard sees (``g, _ = enum.pickle_by_enum_name(E.A, 2)``: every dunder, os.environ)
    "enum": frozenset({"EnumType", "EnumMeta", "global_enum", "pickle_by_enum_name"}),
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
    # pthread_getcpuclockid(t) hands the int to glibc as a `struct pthread *` and reads its `tid` field:
    # ``time.pthread_getcpuclockid(id(b) + 32 - 0x2d0)`` read any 4 bytes of the worker's memory (the
    # clock id is ``~tid << 3``), a bad address was a SIGSEGV. clock_settime sets the host's clock (only
    # the dropped privileges stop it). Linux-only names: where the module lacks one, nothing to deny.
    "time": frozenset({"pthread_getcpuclockid", "clock_settime", "clock_settime_ns"}),
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
    _harden_enum()
    _harden_wraps()
    _harden_dataclasses()
    _build_module_proxies()
    # Trusted code looks up a class's module: dataclasses reads sys.modules[cls.__module__]
    # (and exec's its generated methods there). An empty module, not the namespace.
    placeholder = sys.modules.setdefault(SANDBOX_MODULE, types.ModuleType(SANDBOX_MODULE))
    # exec() would give the generated methods the real builtins there
    placeholder.__dict__.setdefault("__builtins__", _build_builtins())


# -- whose object is it ---------------------------------------------------------------


def _defined_in_sandbox(obj: Any) -> bool:
    """A class of the sandbox, or an instance of one. Classes get ``__module__``
    from the globals' ``__name__`` (which sandbox code cannot rebind)."""
    cls = obj if isinstance(obj, type) else type(obj)
    return getattr(cls, "__module__", None) == SANDBOX_MODULE


def _sandbox_function(obj: Any) -> bool:
    return type(obj) is types.FunctionType and obj.__globals__.get("__name__") == SANDBOX_MODULE


#: Private names EnumType sets in the own dict of every enum class, to host callables the guards
#: would hand out as the sandbox's own: ``_new_member_`` is the ``__new__`` members are made with
#: (``object.__new__``: an instance of any class past its ``__init__``; a builtin, so it does not bind
#: when read off a member either), ``_value_repr_`` the data type's raw ``__repr__`` (a dataclass
#: mixin's generated one takes any ``self`` and reads its fields natively: ``random._os``).
_ENUM_INTERNALS = frozenset({"_new_member_", "_value_repr_"})
#: The bookkeeping EnumType puts in the own dict of every enum class and its native code then trusts:
#: a member is made as ``cls._new_member_(cls, *args)`` (or ``cls._member_type_(*args)``, by
#: ``_use_args_``), and whatever that returns gets ``_value_``, ``_name_`` and ``__objclass__`` set and
#: its ``__init__(*args)`` called, natively (``_proto_member.__set_name__``); ``Flag._missing_`` makes
#: ``cls._member_type_.__new__(cls, value)`` and sets the same on it; the maps and lists are appended
#: to. An enum class is the sandbox's own, so model code could assign these on it: a member's
#: ``__init__`` setting ``type(self)._new_member_`` made the next member whatever that returned (an own
#: dataclass's class: its generated ``__init__``, unbound, ran on ``(dataclasses, f)`` and set
#: ``dataclasses.repr``, round 13's way to the real ``os.environ``; a module: renamed). Not assignable
#: or deletable in the sandbox (on any object: the compiler cannot tell an enum class from another).
ENUM_BOOKKEEPING = frozenset({"_new_member_", "_use_args_", "_member_type_", "_member_names_", "_member_map_",
                              "_value2member_map_", "_unhashable_values_", "_value_repr_"})


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
    if isinstance(obj, type) and any(name in vars(meta) for meta in type(obj).__mro__):
        # Read off a class, a name its MRO lacks is looked up on the metaclass (and the metaclass's
        # data descriptors come first): a class of the sandbox reached EnumType._convert_, which
        # turns any module's globals (builtins.eval, open) into members. Metaclasses are never the
        # sandbox's own (a class statement cannot define one).
        return False
    if name in _ENUM_INTERNALS and enum.Enum in mro:
        # EnumType puts these host callables into each enum class's own dict (see _ENUM_INTERNALS)
        return False
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
    if type(obj) is super and not _defined_in_sandbox(obj.__self__):
        # super(T, x) reads x's attributes past T, the host's where x is not the sandbox's own:
        # super(type(b), b).find was the real bytearray.find (see _STALE_BUFFER_TYPES)
        raise SandboxPolicyError("super() proxies the sandbox's own objects only")
    if name in SAFE_DUNDERS:
        return _vet(getattr(obj, name) if default is _MISSING else getattr(obj, name, default))
    if name == "__new__" and type(obj) is type and obj in _BUILTIN_NEWS:
        return _BUILTIN_NEWS[obj]
    if name.startswith("_") and name != "_":
        if not (_dunder_allowed(obj, name) if _is_dunder(name) else _private_allowed(obj, name)):
            _refuse_attr(obj, name)
    elif name in _BLOCKED_ATTRS or isinstance(obj, _OPAQUE_TYPES):
        raise SandboxPolicyError(f'access to "{name}" is not allowed: frames and code objects are off limits')
    if name in ("format", "format_map") and isinstance(obj, super) and _super_resolves_to_str(obj, name):
        # super().format of a str subclass is the real str.format: its fields walk attributes
        # with the real getattr. Hand out the guarded one, bound as super() would bind it.
        obj = str.__str__(obj.__self__) if isinstance(obj.__self__, str) else str
    if name in ("format", "format_map") and (
        isinstance(obj, str) or (isinstance(obj, type) and issubclass(obj, str))
    ):
        if isinstance(obj, str):
            method = _safe_format if name == "format" else _safe_format_map
            return lambda *a, **k: method(obj, *a, **k)
        return _safe_format if name == "format" else _safe_format_map
    if isinstance(obj, types.ModuleType):
        _check_module(obj)  # held without a guard seeing it (a pattern read it natively): still inert
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
    value = _vet(value)
    if name == "mro" and isinstance(obj, type) and type(value) is types.BuiltinMethodType:
        # type.mro() lists the real bases in a call's result, which no guard sees: the real array.array and
        # bytearray past the sandbox's subclasses (``next(iter(type(a).mro()[1:]))``, see _STALE_BUFFER_TYPES)
        # (each replaced once: the sandbox's subclass then stands where CPython's view has the one class)
        mro = value

        def vetted_mro() -> list[Any]:
            out: list[Any] = []
            for klass in mro():
                klass = _vet(klass)
                if not any(seen is klass for seen in out):
                    out.append(klass)
            return out

        vetted_mro.__name__ = vetted_mro.__qualname__ = "mro"
        return vetted_mro
    if name == "__setitem__" and getattr(value, "__objclass__", None) is list:
        # list's own store, read off an own list subclass or through super() (see _list_setitem)
        if type(value) is types.WrapperDescriptorType:
            value = _list_setitem
        else:
            target = value.__self__
            value = lambda key, item, /: _list_setitem(target, key, item)  # noqa: E731
    if _is_dunder(name) and _unbound_host_method(obj, name, value):
        value = _own_class_method(obj, name, value)
    if name == "__get__":
        return _classmethod_get(obj, value)
    return value


def _is_classmethod(obj: Any) -> bool:
    return classmethod in type(obj).__mro__  # by the real type: an own class cannot lie about it here


def _check_classmethod_chain(cm: Any, instance: Any, owner: Any) -> None:
    """``classmethod.__get__(instance, owner)`` calls the wrapped object's own ``__get__(owner, owner)``
    when it has one (Python 3.9 to 3.12), with ``owner`` (else ``type(instance)``) as the instance.
    Read off an own subclass of classmethod, ``C(d).__get__(None, x)`` was any host descriptor's
    ``__get__`` on any object ``x``: a host property's getter on a module (``NormalDist.mean`` read
    ``_mu``: round 11's ``property.__get__`` by another door) and a ``functools.cached_property``
    writing ``x.__dict__[name] = f(x)`` for a name ``x`` lacks: a module's globals, where a name shadows
    a builtin for that module's code (``repr`` in dataclasses: its result is the source text of a
    frozen dataclass's ``__setattr__``, exec'd natively: the real ``os.environ``). Allowed where the
    native access does the same: ``owner`` a class of the sandbox (``A.m`` finds ``C(d)`` in ``A``'s
    dict); else the chain is followed as CPython does (a classmethod in a classmethod, own or not,
    passes ``x`` on natively) and must end in a function (it binds), an object with no ``__get__``,
    or one whose ``__get__`` the sandbox wrote."""
    target = type(instance) if owner is None else owner
    if isinstance(target, type) and _defined_in_sandbox(target):
        return
    inner = cm.__func__
    for _ in range(sys.getrecursionlimit()):
        kind = type(inner)
        if kind is types.FunctionType or not hasattr(kind, "__get__"):
            return
        if classmethod in kind.__mro__:
            inner = inner.__func__  # its __get__ (C) is called natively with (x, x): the chain goes on
            continue
        definer = next((klass for klass in kind.__mro__ if "__get__" in vars(klass)), None)
        if definer is not None and getattr(definer, "__module__", None) == SANDBOX_MODULE:
            return  # the model's own __get__ (guarded code) gets x
        break
    raise SandboxPolicyError(f"classmethod.__get__ of a {type(inner).__name__} is available in the sandbox for "
                             "its own classes only")


def _classmethod_get(obj: Any, get: Any) -> Any:
    """``__get__`` read off an own classmethod subclass (bound to an instance, or unbound off the class),
    handed out checking the chain it would start (see ``_check_classmethod_chain``)."""
    own = _own_class_of(obj, "__get__")
    if own is not None:
        if classmethod not in own.__mro__:
            return get

        def unbound(self: Any, instance: Any = None, owner: Any = None, /) -> Any:
            if _is_classmethod(self):
                _check_classmethod_chain(self, instance, owner)
            return get(self, instance, owner)

        unbound.__name__, unbound.__qualname__ = "__get__", f"{own.__qualname__}.__get__"
        return unbound
    cm = obj.__self__ if type(obj) is super else obj
    if not _is_classmethod(cm):
        return get

    def bound(instance: Any = None, owner: Any = None, /) -> Any:
        _check_classmethod_chain(cm, instance, owner)
        return get(instance, owner)

    bound.__name__ = bound.__qualname__ = "__get__"
    return bound


#: Types whose values are never a denied or replaced object (the common case, checked first).
_PLAIN_TYPES = frozenset({str, int, float, bool, complex, bytes, bytearray, list, tuple, dict, set, frozenset,
                          type(None)})
_DENY = object()
#: id(original) -> (original, replacement or _DENY): what a read hands out in place of an object
#: the sandbox must not hold, whichever module or object it is read from (``numbers.ABCMeta`` is
#: ``abc.ABCMeta``, a module's dict copied into a host function by functools.wraps). Filled by
#: _build_identity_tables once the modules are loaded; the original is kept so its id stays its own.
_BY_ID: dict[int, tuple[Any, Any]] = {}
_DENIED_NAMES: dict[int, str] = {}


def _vet(value: Any) -> Any:
    """The value a guarded read hands to model code: denied objects raise, replaced ones
    (and the types ``type()`` stands in for) come back as the sandbox's version."""
    if type(value) in _PLAIN_TYPES:
        if type(value) is not dict:
            return value
        # a plain dict may still be a denied one (copy.dispatch_table, copyreg's global table), read
        # by another way than off its module: a GenericAlias or typing alias forwards reads to it
        entry = _BY_ID.get(id(value))
        if entry is None or entry[0] is not value:
            return value
    entry = _BY_ID.get(id(value))
    if entry is not None and entry[0] is value:
        if entry[1] is _DENY:
            raise SandboxPolicyError(f"{_DENIED_NAMES[id(value)]} is not available in the sandbox")
        return entry[1]
    if isinstance(value, type):
        if issubclass(value, type):
            # a metaclass called directly builds a class from a dict, past the class statement's checks
            raise SandboxPolicyError(f"the metaclass {value.__name__} is not available in the sandbox; "
                                     "use a class statement")
    elif isinstance(value, types.ModuleType):
        _check_module(value)
    elif type(value) is types.BuiltinMethodType:
        owner = value.__self__
        if isinstance(owner, str) and value.__name__ in ("format", "format_map"):
            # a bound str.format is a new object each time (the tables cannot know it): read off a
            # str by guarded_getattr it is never handed out, but a pattern reads ``format`` natively
            # off a str subclass whose other base's __match_args__ names it
            method = _safe_format if value.__name__ == "format" else _safe_format_map
            return lambda *a, **k: method(owner, *a, **k)
    elif type(value) is types.MethodType:
        func = _BY_ID.get(id(value.__func__))
        if func is not None and func[0] is value.__func__:
            if func[1] is _DENY:
                raise SandboxPolicyError(f"{_DENIED_NAMES[id(func[0])]} is not available in the sandbox")
            return types.MethodType(func[1], value.__self__)  # a replaced method, bound as it was
    elif type(value) is types.FunctionType:
        return _checked_method(value)
    return value


#: id(host class's method) -> (method, its self-checking version, what reads hand out)
_METHODS: dict[int, tuple[Any, Any]] = {}


def _checked_method(func: types.FunctionType) -> Any:
    """A host class's method read unbound (``re.Scanner.scan``, ``Sub.__init__`` off a class of the
    sandbox deriving from a host class, a property's ``fget``) takes any object as ``self``, unlike
    the methods of C types: ``Scanner.__init__(re, ...)`` and ``UserDict.__init__(typing)`` wrote
    attributes of modules, ``JSONEncoder.__init__(JSONEncoder, default=f)`` replaced the default
    of the worker's JSON encoders. Handed out checking that ``self`` is an instance of the class
    (by its MRO, as C methods check), which is all ordinary code passes."""
    module, qualname = func.__module__, func.__qualname__
    if module == SANDBOX_MODULE or type(qualname) is not str or "." not in qualname or "<locals>" in qualname:
        return func  # not a method of a module's class (and not kept: the sandbox makes functions without end)
    entry = _METHODS.get(id(func))
    if entry is not None and entry[0] is func:
        return entry[1]
    owner = _method_owner(func)
    if owner is None:
        return func  # not kept either: namedtuple's methods name a class their module lacks

    def method(self: Any, /, *args: Any, **kwargs: Any) -> Any:
        if owner not in type(self).__mro__:
            raise TypeError(f"{owner.__qualname__}.{func.__name__}() needs a {owner.__qualname__} object as "
                            f"self, not a {type(self).__name__}")
        return func(self, *args, **kwargs)

    method.__name__, method.__qualname__, method.__doc__ = func.__name__, func.__qualname__, func.__doc__
    _METHODS[id(func)] = (func, method)  # the methods of the modules' classes: a bounded set
    return method


#: What reading a method off a class (not an instance) gives without binding it: it takes any ``self``.
_UNBOUND_TYPES = (types.WrapperDescriptorType, types.MethodDescriptorType, types.FunctionType)


def _own_class_of(obj: Any, name: str | None = None) -> type | None:
    """The sandbox's class a dunder read off ``obj`` is unbound from: ``obj`` itself, or the class
    a ``super()`` over a class (``super(P, P)``) proxies; None where the read binds to an instance.
    ``__new__`` never binds (a static method; ``object.__new__`` is a builtin): read off an instance of
    the sandbox (``A().__new__``, ``super().__new__`` in an ordinary method) it is as unbound as off the
    class, and was the real ``object.__new__``, an instance of any class past its ``__init__``
    (round 11's ``A.__new__(json.JSONEncoder)`` by the instance): the instance's class is the own one."""
    if type(obj) is super:
        return obj.__self_class__ if isinstance(obj.__self__, type) or name == "__new__" else None
    if isinstance(obj, type):
        return obj if _defined_in_sandbox(obj) else None
    return type(obj) if name == "__new__" and _defined_in_sandbox(obj) else None


def _cell_function(obj: Any) -> bool:
    """A function compiled from a cell: its body went through the rewrite (every attribute it writes
    goes through ``guarded_write``). Not the methods dataclasses exec's from source in the
    placeholder module: they count as the sandbox's own (``_sandbox_function``) but write natively."""
    return _sandbox_function(obj) and obj.__code__.co_filename == CELL_FILENAME


def _unbound_host_method(obj: Any, name: str, value: Any) -> bool:
    """Whether ``value``, read as ``obj.<name>`` (a dunder), is a method not compiled from a cell,
    left unbound by a read off a class of the sandbox: a host base class's ``ModuleType.__init__``
    (renames any module), ``property.__init__`` / ``__set__`` (rewrites or calls any host property's
    accessors), ``object.__new__`` (makes an instance of any class, past its ``__init__``), and the
    ``__init__`` dataclasses generates (``self.<field> = value`` natively, on any object: a module's
    functions replaced)."""
    if _own_class_of(obj, name) is None:
        return False
    if name == "__new__":
        return type(value) is types.BuiltinFunctionType or (
            type(value) is types.FunctionType and not _cell_function(value))
    return type(value) in _UNBOUND_TYPES and not _cell_function(value)


def _own_class_method(obj: Any, name: str, method: Any) -> Any:
    """An unbound ``method`` not compiled from a cell, read off a class of the sandbox (``class
    M(ModuleType)``, ``M.__init__``; a dataclass's generated ``__init__``): what the sandbox holds it
    by is its own class, so it takes an instance of that class as ``self`` (``__new__``: a subclass
    of it), as a read off an instance would bind it. The host class itself would refuse the read."""
    own = _own_class_of(obj, name)
    assert own is not None

    if name == "__new__":
        def checked(cls: Any, /, *args: Any, **kwargs: Any) -> Any:
            if not (isinstance(cls, type) and own in cls.__mro__):
                raise TypeError(f"{own.__qualname__}.__new__() needs a subclass of {own.__qualname__}, "
                                f"not {cls!r}")
            return method(cls, *args, **kwargs)
    else:
        def checked(self: Any, /, *args: Any, **kwargs: Any) -> Any:
            if own not in type(self).__mro__:
                raise TypeError(f"{own.__qualname__}.{name}() needs a {own.__qualname__} object as self, "
                                f"not a {type(self).__name__}")
            return method(self, *args, **kwargs)

    checked.__name__ = name
    checked.__qualname__ = f"{own.__qualname__}.{name}"
    checked.__doc__ = getattr(method, "__doc__", None)
    return checked


#: Builtin types whose ``__new__`` model code calls by name in a subclass (``int.__new__(cls, v)``,
#: ``str.__new__(cls, s)``, ``bytes.__new__(cls, [v])`` in an Enum mixin, ``tuple.__new__(cls, xs)``).
_NEWABLE_BUILTINS = frozenset({object, int, float, complex, str, bytes, bytearray, tuple, list, dict, set,
                               frozenset})


def _builtin_new(base: type) -> Callable[..., Any]:
    """``base.__new__`` for a class of the sandbox only: what ``super().__new__(cls)`` in that class
    gives. Unrestricted, ``object.__new__`` is an instance of any class past its ``__init__``."""
    new = base.__new__

    def checked(cls: Any, /, *args: Any, **kwargs: Any) -> Any:
        if not (isinstance(cls, type) and _defined_in_sandbox(cls) and base in cls.__mro__):
            raise SandboxPolicyError(f"{base.__name__}.__new__() takes a class defined in the sandbox that "
                                     f"subclasses {base.__name__}, not {cls!r}; call the class itself instead")
        return new(cls, *args, **kwargs)

    checked.__name__, checked.__qualname__, checked.__doc__ = "__new__", f"{base.__name__}.__new__", new.__doc__
    return checked


_BUILTIN_NEWS = {base: _builtin_new(base) for base in _NEWABLE_BUILTINS}


def _method_owner(func: types.FunctionType) -> type | None:
    """The host class ``func`` is a method of (found by its qualified name, in the class's own dict:
    raw, or as a property's accessor), or None for a module's function, a static method, or the
    sandbox's own functions."""
    module, qualname = func.__module__, func.__qualname__
    if type(module) is not str or func.__globals__.get("__name__") == SANDBOX_MODULE:
        return None
    *path, name = qualname.split(".")
    owner: Any = sys.modules.get(module)
    for part in path:
        owner = getattr(owner, part, None)
    if not isinstance(owner, type):
        return None
    raw = vars(owner).get(name)
    if raw is func or (isinstance(raw, property) and func in (raw.fget, raw.fset, raw.fdel)):
        return owner
    return None


def _super_resolves_to_str(proxy: super, name: str) -> bool:
    """Whether ``proxy.<name>`` would find ``str``'s own method (what super() resolves)."""
    owner = proxy.__self__
    if owner is None:
        return False
    mro = (owner if isinstance(owner, type) else type(owner)).__mro__
    start = proxy.__thisclass__
    after = mro[mro.index(start) + 1:] if start in mro else ()
    return next((klass for klass in after if name in vars(klass)), None) is str


def _check_module(module: types.ModuleType) -> None:
    if module.__name__ not in ALLOWED_MODULES:
        raise SandboxPolicyError(f'module "{module.__name__}" is not available in the sandbox')


def guarded_getitem(obj: Any, key: Any) -> Any:
    # a module kept in some dict, a host dict holding a denied object: the same check as attributes
    return _vet(obj[key])


def guarded_hasattr(obj: Any, name: str) -> bool:
    try:
        guarded_getattr(obj, name)
    except (AttributeError, SandboxPolicyError):
        return False
    return True


# -- writes -----------------------------------------------------------------------------

def guarded_write(obj: Any) -> Any:
    """Target of every ``obj.attr = v`` / ``obj[k] = v`` / ``del``: containers and
    the sandbox's own classes, instances and functions only (no monkeypatching
    modules, the context directory or host functions)."""
    if type(obj) is list:  # the most common target first
        return _list_writer(obj)  # l[::2] = <model iterable> (see _list_setitem)
    if isinstance(obj, _WRITABLE_TYPES) or _defined_in_sandbox(obj) or _sandbox_function(obj):
        if _stores_as_list(obj):
            return _list_writer(obj)
        return obj
    raise SandboxPolicyError(f"cannot modify {type(obj).__name__} objects in the sandbox")


def _check_set_name(name: Any, verb: str) -> None:
    if type(name) is not str or (
        name.startswith("_") and name != "_" and _is_dunder(name) and name not in WRITABLE_DUNDERS
    ) or name in ENUM_BOOKKEEPING:
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


_ATTRIBUTE_HOOKS = ("__getattr__", "__getattribute__", "__setattr__", "__delattr__",
                    # a subclassed descriptor (cached_property) reads and writes any instance's __dict__
                    "__get__", "__set__", "__delete__", "__set_name__")


def _check_base(base: Any) -> None:
    if not isinstance(base, type):
        return  # type() itself reports it
    if issubclass(base, type):
        raise SandboxPolicyError("metaclasses cannot be defined in the sandbox")
    if base in _STAND_INS.values():
        raise SandboxPolicyError(f"{base.__name__} cannot be subclassed in the sandbox")
    if issubclass(base, (super, string.Formatter, pprint.PrettyPrinter, dataclasses.Field)):
        # a subclass instance would count as the sandbox's own object while it
        # proxies a foreign one (super), walks attributes unguarded (Formatter),
        # holds the worker's stdout in its instance dict (PrettyPrinter._stream) or
        # names a field in the source dataclasses exec's natively (Field)
        raise SandboxPolicyError(f"{base.__name__} cannot be subclassed in the sandbox")
    if issubclass(base, _STALE_BUFFER_TYPES):
        # an instance of the sandbox's own subclass is writable (``a[i] = v``, a native STORE_SUBSCR) and
        # its inherited slots readable (``a.__setitem__``, ``b.__mod__``): the C code that runs the model's
        # __index__ there on a size and buffer it does not reload (see _STALE_BUFFER_TYPES)
        raise SandboxPolicyError(f"{base.__name__} cannot be subclassed in the sandbox")
    if issubclass(base, typing._Final):  # type: ignore[attr-defined]
        # typing refuses these itself unless a private keyword says otherwise, which the class
        # statement's keywords may not, but an own base's __init_subclass__ passed on to typing's
        # (super().__init_subclass__(_root=True)) did: TypeVar, ForwardRef, the aliases
        raise SandboxPolicyError(f"{base.__name__} cannot be subclassed in the sandbox: a special typing class")
    module = getattr(base, "__module__", None)
    if type(module) is not str or module.partition(".")[0] not in _BASE_MODULES:
        raise SandboxPolicyError(
            f"{base.__name__} cannot be subclassed in the sandbox: it is not a class of an allowed module")
    for klass in base.__mro__:
        if klass.__module__ == SANDBOX_MODULE:
            continue
        for hook in _ATTRIBUTE_HOOKS:
            # A foreign Python-level hook (typing's aliases forward reads and writes to
            # __origin__) would run with the real getattr/setattr on whatever the
            # instance points at, while the instance counts as the sandbox's own.
            if isinstance(vars(klass).get(hook), types.FunctionType):
                raise SandboxPolicyError(
                    f"{base.__name__} cannot be subclassed in the sandbox: {klass.__name__} defines {hook}")


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
        for key in kwargs:
            if key.startswith("_"):
                # private switches of foreign __init_subclass__ hooks (typing's _root=True)
                raise SandboxPolicyError(f"class keyword {key!r} is not allowed: names starting with '_' are private")
        meta = _metaclass_of(bases)
        return meta.__prepare__(name, bases, **kwargs)

    def __call__(self, name: str, bases: tuple[Any, ...], namespace: Any, **kwargs: Any) -> Any:
        new = namespace.get("__new__", _MISSING)
        if new is not _MISSING:
            namespace["__new__"] = _checked_new(new, namespace.get("__qualname__", name))
        qualname = namespace.get("__qualname__", name)
        for op in _RICH_COMPARISONS:
            hook = namespace.get(op, _MISSING)
            if hook is not _MISSING and hook is not None:  # see _operand_keeping
                namespace[op] = _operand_keeping(hook, f"{qualname if type(qualname) is str else '?'}.{op}")
        cls = _metaclass_of(bases)(name, bases, namespace, **kwargs)
        _check_inherited_match_args(cls)
        return cls


_CLASS_STATEMENT = _ClassStatement()

#: What a ``__new__`` of a class statement may return besides an instance of the class it was called
#: for and an object of the sandbox's own: immutable plain data (no attributes to set, no state an
#: ``__init__`` could change).
_NEW_RESULT_TYPES = frozenset({int, float, complex, bool, str, bytes, tuple, frozenset, type(None)})


def _checked_new(new: Any, qualname: Any) -> Callable[..., Any]:
    """The ``__new__`` a class statement defines, checking what it returns. Host code makes objects
    with ``cls.__new__`` and then treats the result as the new instance, natively: Enum sets
    ``_value_`` / ``_name_`` on each member and calls ``member.__init__(*value)`` (a class returned made
    that an unbound ``__init__`` on any object: a dataclass's generated one wrote a module's function;
    a module returned was renamed), ``Flag._missing_`` names what the mixin's ``__new__`` gives, and
    ``Fraction.__new__`` writes ``_numerator`` onto what ``super().__new__(cls)`` returns (a class of
    the sandbox later in the MRO chooses it). Accepted: an instance of ``cls`` (its subclasses too),
    an instance of a class of the sandbox, immutable plain data."""

    def __new__(cls: Any, /, *args: Any, **kwargs: Any) -> Any:
        get = getattr(type(new), "__get__", None)  # as the class would bind it: staticmethod, classmethod
        result = (new if get is None else get(new, None, cls))(cls, *args, **kwargs)
        kind = type(result)
        if (isinstance(cls, type) and cls in kind.__mro__) or kind in _NEW_RESULT_TYPES or (
                not isinstance(result, type) and _defined_in_sandbox(result)):
            return result
        raise SandboxPolicyError(f"{getattr(cls, '__qualname__', '?')}.__new__() returned a {kind.__name__}: in "
                                 "the sandbox __new__ returns an instance of the class, an object of the sandbox's "
                                 "own or plain immutable data")

    __new__.__qualname__ = f"{qualname}.__new__" if type(qualname) is str else "__new__"
    __new__.__doc__ = getattr(new, "__doc__", None)
    return __new__


#: The rich comparison hooks a class statement defines (see ``_operand_keeping``).
_RICH_COMPARISONS = ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__")
_getrefcount = sys.getrefcount
#: Operands of the model's comparison hooks that would have died when the hook returned NotImplemented,
#: kept alive until the cell ends (``release_kept_operands``): see ``_operand_keeping``.
_KEPT_OPERANDS: list[Any] = []


def _operand_keeping(hook: Any, qualname: str) -> Callable[..., Any]:
    """A comparison hook of a class statement, keeping its operands alive when it returns NotImplemented.

    C code compares objects it holds borrowed (``list_richcompare`` compares the first differing items
    again with the ordering operator as ``PyObject_RichCompare(vl->ob_item[i], wl->ob_item[i], op)``, no
    reference taken, CPython 3.11.7; gh-120298). The model's ``__lt__`` clears the list (``v.clear()``): its
    item, ``self``, dies as the hook returns, and on NotImplemented ``do_richcompare`` goes on with the
    reflected operation on it: the dead object handed to the other item's ``__gt__`` as ``other`` (kept
    there, its memory reused by the next allocation: a SIGSEGV of the worker, a type confusion), or its
    freed memory read for the error message. An operand only this call holds (its reference count) is
    kept in ``_KEPT_OPERANDS`` then, until the cell ends; ordinary code (whose operands the caller
    holds) keeps nothing."""
    get = getattr(type(hook), "__get__", None)
    plain = type(hook) is types.FunctionType

    def compare(self: Any, other: Any, /) -> Any:
        result = hook(self, other) if plain else (hook if get is None else get(hook, self, type(self)))(other)
        if result is NotImplemented:
            # 2: this frame's reference and getrefcount's argument (3: the same object twice)
            least = 3 if self is other else 2
            if _getrefcount(self) <= least or _getrefcount(other) <= least:
                _KEPT_OPERANDS.append((self, other))
        return result

    compare.__name__ = qualname.rpartition(".")[2]
    compare.__qualname__ = qualname
    compare.__doc__ = hook.__doc__ if plain else None  # (no read of a model object's attributes here)
    return compare


#: The code of every ``_operand_keeping`` wrapper: what tells one apart (an attribute could be set by the model).
_OPERAND_KEEPING_CODE = _operand_keeping(len, "x.__eq__").__code__


def _keep_compared_operands(cls: type) -> None:
    """The comparison hooks a host decorator added to a class of the sandbox (``functools.total_ordering``'s
    ``_gt_from_lt`` calls the model's ``__lt__`` and returns its NotImplemented), made ``_operand_keeping``."""
    for op in _RICH_COMPARISONS:
        hook = vars(cls).get(op)
        if type(hook) is types.FunctionType and hook.__code__ is not _OPERAND_KEEPING_CODE:
            type.__setattr__(cls, op, _operand_keeping(hook, f"{cls.__qualname__}.{op}"))


def release_kept_operands() -> None:
    """Called by the worker when a cell ends: no C code of the cell still holds the kept operands."""
    _KEPT_OPERANDS.clear()


class _PatternValue:
    """Holds a value a pattern reads natively (a class, a dotted value, a mapping key):
    the transformer evaluates it once through the guards, before the ``match``, and the
    pattern reads it back as ``_tmpN.v`` so nothing can swap it in between."""

    __slots__ = ("v",)

    def __init__(self, v: Any) -> None:
        self.v = v


def _match_class(cls: Any) -> _PatternValue:
    """Checked before a ``match`` whose cases have class patterns: CPython reads the
    keyword names and ``cls.__match_args__`` on the subject with the real getattr."""
    _check_match_class(cls)
    return _PatternValue(cls)


def _check_match_class(cls: Any) -> None:
    if not isinstance(cls, type):
        return  # the match raises TypeError itself
    if type(cls) not in (type, enum.EnumType) or cls is object or issubclass(
        cls, (types.ModuleType, string.Formatter, *_OPAQUE_TYPES)
    ):
        # isinstance must not lie (ABCs, protocols) and the subject must not be any object at all
        raise SandboxPolicyError(f"{cls.__name__} cannot be used in a class pattern in the sandbox")
    for klass in cls.__mro__:
        # The pattern reads the keyword attributes natively, past _vet: a foreign class that
        # forwards reads to an object of the caller's choice (GenericAlias(functools, ()), in C;
        # typing's aliases, in Python) would hand out whatever that object holds. super too (C):
        # ``case super(find=f)`` on ``super(type(ba), ba)`` read the real bytearray.find past the
        # check guarded_getattr makes of a super over a host object (see _STALE_BUFFER_TYPES).
        if klass is types.GenericAlias or klass is super or (klass.__module__ != SANDBOX_MODULE and any(
                isinstance(vars(klass).get(hook), types.FunctionType) for hook in ("__getattr__", "__getattribute__"))):
            raise SandboxPolicyError(f"{cls.__name__} cannot be used in a class pattern in the sandbox: "
                                     f"{klass.__name__} forwards attribute reads")
    # The match reads cls.__match_args__ again, natively: check what that read will return. The
    # raw class-dict value of the first class in the MRO defining it, and only an exact tuple of
    # exact str (no __get__, no __iter__ or __eq__ of a subclass), answers the same both times.
    names: Any = ()
    for klass in cls.__mro__:
        if "__match_args__" in vars(klass):
            names = vars(klass)["__match_args__"]
            break
    if type(names) is not tuple or any(type(name) is not str for name in names):
        raise SandboxPolicyError(f"{cls.__name__}.__match_args__ must be a tuple of str in the sandbox")
    for name in names:
        private = name.startswith("_") and name != "_"
        if (private and (_is_dunder(name) or not _private_allowed(cls, name))) or name in _BLOCKED_ATTRS or (
            name in ("format", "format_map") and issubclass(cls, str)
        ):
            raise SandboxPolicyError(f"{cls.__name__}.__match_args__ names {name!r}, which is not readable")


class _RefusedCapture:
    """What a pattern's captured name holds in place of a value the guards refuse (see
    ``_match_bind``): a foreign object with nothing readable."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return "<refused>"


def _match_bind(value: Any) -> Any:
    """A value a pattern read natively, as a guarded read would hand it out (``_vet``), or
    a marker where it is refused (``_match_check`` raises then)."""
    try:
        return _vet(value)
    except SandboxPolicyError as e:
        return _RefusedCapture(str(e))


def _match_check(*values: Any) -> bool:
    """True (the case goes on to its own guard), once every captured value is vetted."""
    for value in values:
        if type(value) is _RefusedCapture:
            raise SandboxPolicyError(f"a pattern captured a value that is not available in the sandbox: "
                                     f"{value.reason}")
    return True


def _check_inherited_match_args(cls: type) -> None:
    """A class pattern checks the private names of ``C.__match_args__`` against C
    (``_check_match_class``), but the match reads them natively on the subject, which may
    be an instance of a subclass that also derives from a host class: ``class D(C,
    random.Random)`` made ``case C(r)`` read ``Random._randbelow`` off a D. Checked when
    the subclass is made (``__match_args__`` and bases cannot be assigned afterwards): each
    private name it inherits must not come from a class of the host."""
    names: Any = ()
    for klass in cls.__mro__[1:]:
        if "__match_args__" in vars(klass):
            names = vars(klass)["__match_args__"]
            break
    if type(names) is not tuple:
        return  # _check_match_class refuses it when a pattern uses it
    for attr in names:
        if type(attr) is str and attr.startswith("_") and attr != "_" and not _private_allowed(cls, attr):
            raise SandboxPolicyError(f"{cls.__name__} inherits __match_args__ naming {attr!r}, which it "
                                     "gets from a class of the host: not readable in the sandbox")


# -- safer versions of module functions that take attribute names -------------------------

_WRAPS_ASSIGNED = ("__module__", "__name__", "__qualname__", "__doc__")


def _update_wrapper(wrapper: Any, wrapped: Any, assigned: Any = _WRAPS_ASSIGNED, updated: Any = ("__dict__",)) -> Any:
    """functools.update_wrapper that copies only names: not ``__dict__`` (it would
    copy a host class's methods or a module's globals), not ``__wrapped__``."""
    target = guarded_write(wrapper)
    for name in assigned:
        # exact str: a str subclass's __eq__ would pass the check and reach the real getattr
        if type(name) is not str or name not in _WRAPS_ASSIGNED:
            raise SandboxPolicyError(f'update_wrapper/wraps can copy only {", ".join(_WRAPS_ASSIGNED)}, not {name!r}')
        try:
            value = getattr(wrapped, name)
        except AttributeError:
            continue
        if name != "__module__":  # a class's __module__ says whether it is the sandbox's
            setattr(target, name, value)
    for name in updated:
        if type(name) is not str or name != "__dict__":
            raise SandboxPolicyError(f"update_wrapper/wraps cannot update {name!r} in the sandbox")
    return wrapper


def _wraps(wrapped: Any, assigned: Any = _WRAPS_ASSIGNED, updated: Any = ("__dict__",)) -> Callable[[Any], Any]:
    def decorator(wrapper: Any) -> Any:
        return _update_wrapper(wrapper, wrapped, assigned, updated)

    return decorator


def _check_native_read(obj: Any, name: str, what: str) -> None:
    """Trusted code is about to read ``obj.<name>`` natively, ``name`` being model code's choice
    (a dataclass field's): what it gets must be what a guarded read would hand out. Read off a
    class, a name its MRO lacks comes from the metaclass: a field named ``_convert_`` on an Enum
    made ``EnumType._convert_`` the field's default, which turns any module's globals into
    members (the real ``open``) and writes them into that module; off an instance, a private
    name a host base class defines (``Random._randbelow``) was handed to the model's code.

    The read as it stands now is checked, and so is what it would reach once the sandbox's own
    dicts lack the name (``_check_host_fallback``): model code runs between this check and the
    native read (a descriptor or property of another field) and may delete its own attributes."""
    _check_host_fallback(obj, name, what)
    try:
        value = getattr(obj, name)
    except AttributeError:
        return
    try:
        guarded_getattr(obj, name)  # the rules for the name: private, dunder, a metaclass's, ABC.register
        vetted = _vet(value)
    except AttributeError:
        return
    except SandboxPolicyError as e:
        raise SandboxPolicyError(f"{what} {name!r} is not readable in the sandbox: {e}") from None
    if vetted is not value or (_is_dunder(name) and _unbound_host_method(obj, name, vetted)) or (
            name == "__get__" and _classmethod_get(obj, vetted) is not vetted):
        raise SandboxPolicyError(f"{what} {name!r} is not readable in the sandbox: it is a host object "
                                 "handed out only in a checked version")


def _check_host_fallback(obj: Any, name: str, what: str) -> None:
    """What a native ``getattr(obj, name)`` finds in the host's classes, with every dict of the
    sandbox's own left out (instance, own classes): the first host class in the MRO defining the
    name, else (off a class) the metaclass. Host classes and metaclasses cannot be changed from
    the sandbox, so this holds whatever model code deletes. Refused: a private name there, a raw
    function read off a class (a host method taking any ``self``), an object the guards replace
    or deny, and off a class any name but a dunder that a metaclass other than ``type`` defines."""
    is_class = isinstance(obj, type)
    for klass in obj.__mro__ if is_class else type(obj).__mro__:
        if getattr(klass, "__module__", None) == SANDBOX_MODULE:
            continue
        raw = vars(klass).get(name, _MISSING)
        if raw is _MISSING:
            continue
        entry = _BY_ID.get(id(raw))
        if (name.startswith("_") and name != "_" and not _is_dunder(name)) or (
            is_class and type(raw) is types.FunctionType) or (entry is not None and entry[0] is raw) or (
            # a host class's slot method (property.__get__), handed out off a class only self-checked
            is_class and _is_dunder(name) and type(raw) in (*_UNBOUND_TYPES, types.BuiltinFunctionType)):
            raise SandboxPolicyError(f"{what} {name!r} is not readable in the sandbox: the host class "
                                     f"{klass.__name__} defines it")
        return
    if is_class and not _is_dunder(name) and any(
            name in vars(meta) for meta in type(obj).__mro__ if meta is not type and meta is not object):
        raise SandboxPolicyError(f"{what} {name!r} is not readable in the sandbox: the metaclass "
                                 f"{type(obj).__name__} defines it")


def _check_dataclass_body(cls: type) -> None:
    """dataclasses builds field names into source code it exec's without the policy: each
    must be a plain identifier, and each field spec exactly a dataclasses.Field. It takes
    each field's default with the real ``getattr(cls, name)``: that must be a read the
    guards allow (see ``_check_native_read``)."""
    for name in vars(cls).get("__annotations__", {}):
        if type(name) is not str or not name.isidentifier() or keyword.iskeyword(name):
            raise SandboxPolicyError(f"dataclass field name {name!r} is not a plain identifier")
        _check_native_read(cls, name, "dataclass field")
    for name, value in vars(cls).items():
        if isinstance(value, dataclasses.Field) and type(value) is not dataclasses.Field:
            raise SandboxPolicyError(f"dataclass field {name!r} must be made with dataclasses.field()")


def _own_class_decorator(real: Callable[..., Any], what: str) -> Callable[..., Any]:
    """A class decorator that writes to the class: only for the sandbox's classes
    (``dataclass(type(context))`` would rewrite a class of the worker)."""

    def check(cls: Any) -> Any:
        if not (isinstance(cls, type) and _defined_in_sandbox(cls)):
            raise SandboxPolicyError(f"{what} works on classes defined in the sandbox only")
        if what == "dataclass":
            _check_dataclass_body(cls)
        return cls

    def done(cls: Any) -> Any:
        if what == "total_ordering" and isinstance(cls, type) and _defined_in_sandbox(cls):
            _keep_compared_operands(cls)  # see _operand_keeping
        return cls

    def decorator(cls: Any = None, /, **kwargs: Any) -> Any:
        if cls is None:
            return lambda c: done(real(check(c), **kwargs))
        return done(real(check(cls), **kwargs) if kwargs else real(check(cls)))

    decorator.__name__ = decorator.__qualname__ = getattr(real, "__name__", what)
    decorator.__doc__ = getattr(real, "__doc__", None)
    return decorator


def _dataclass_replace(obj: Any, /, **changes: Any) -> Any:
    """dataclasses.replace reads the fields from the instance (its ``__dict__`` may hold
    planted ones) and getattr's each name: only the sandbox's instances, fields of the class."""
    if isinstance(obj, type) or not _defined_in_sandbox(obj):
        raise SandboxPolicyError("dataclasses.replace works on instances of classes defined in the sandbox only")
    if "__dataclass_fields__" in getattr(obj, "__dict__", {}):
        raise SandboxPolicyError("dataclasses.replace: the instance shadows its class's fields")
    dataclasses.fields(obj)  # the worker's checked version (see _harden_dataclasses): replace reads each
    return dataclasses.replace(obj, **changes)


def _own_object_decorator(real: Callable[..., Any], what: str) -> Callable[..., Any]:
    """A decorator that sets an attribute on its argument: the sandbox's own functions and classes only."""

    def decorator(obj: Any) -> Any:
        if not (_sandbox_function(obj) or _defined_in_sandbox(obj)):
            raise SandboxPolicyError(f"{what} works on functions and classes defined in the sandbox only")
        return real(obj)

    decorator.__name__ = decorator.__qualname__ = getattr(real, "__name__", what)
    decorator.__doc__ = getattr(real, "__doc__", None)
    return decorator


def _own_abstract(real: type) -> type:
    """abc.abstractclassmethod / abstractstaticmethod: their ``__init__`` sets ``__isabstractmethod__ =
    True`` natively on what they wrap (``abc.abstractclassmethod(json)`` planted it on a host module, a
    host function, a host class). A subclass taking the sandbox's own functions and objects only, named
    as the original (subclassing it in the sandbox keeps working; the original is handed out as this)."""

    def __init__(self: Any, callable: Any, /) -> None:
        if not (_sandbox_function(callable) or _defined_in_sandbox(callable)):
            raise SandboxPolicyError(f"abc.{real.__name__} works on functions and classes defined in the sandbox only")
        real.__init__(self, callable)

    __init__.__qualname__ = f"{real.__qualname__}.__init__"
    return type(real.__name__, (real,), {"__init__": __init__, "__module__": real.__module__,
                                         "__qualname__": real.__qualname__, "__doc__": real.__doc__})


def _dataclass_transform(**kwargs: Any) -> Callable[[Any], Any]:
    """typing.dataclass_transform: its decorator sets ``__dataclass_transform__`` on whatever it is
    given (``dataclass_transform()(json)`` wrote a module's attribute): the sandbox's own objects only."""
    return _own_object_decorator(typing.dataclass_transform(**kwargs), "typing.dataclass_transform")


def _get_origin(tp: Any) -> Any:
    """typing.get_origin reads ``tp.__origin__`` natively: ``get_origin(typing.Type[int])`` was
    the real ``type``, whose three-argument call builds classes past the class statement's
    checks (any base, ``_root=True``, any dunder). What it returns is vetted like a read."""
    return _vet(typing.get_origin(tp))


def _get_args(tp: Any) -> Any:
    """typing.get_args reads ``tp.__args__`` natively: each argument is vetted like a read."""
    return tuple([_vet(x) for x in arg] if type(arg) is list else _vet(arg) for arg in typing.get_args(tp))


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


def _userstring_format(self: Any, /, *args: Any, **kwargs: Any) -> Any:
    """collections.UserString.format: ``self.data.format(...)`` with the real getattr, i.e. the
    real str.format (``UserString('{0.__globals__}').format(f)`` read any host function's
    module globals). The same call through the guards."""
    return guarded_getattr(self.data, "format")(*args, **kwargs)


def _userstring_format_map(self: Any, mapping: Any, /) -> Any:
    return guarded_getattr(self.data, "format_map")(mapping)


_userstring_format.__name__ = _userstring_format.__qualname__ = "format"
_userstring_format_map.__name__ = _userstring_format_map.__qualname__ = "format_map"


def _methodcaller(name: str, /, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
    if type(name) is not str:
        raise TypeError("method name must be a string")
    return lambda obj: guarded_getattr(obj, name)(*args, **kwargs)


def _setitem(obj: Any, key: Any, value: Any) -> None:
    guarded_write(obj)[key] = value


# -- buffers whose C code runs model code on a size and address it does not reload ----------------

#: bytearray and array.array: C methods of theirs call the model's hooks (``__index__``, ``__float__``,
#: ``__bytes__``, ``write``) while they hold the buffer's old size or address; the hook resizes the buffer
#: (``a *= 0``, ``b.clear()``: freed) and the method goes on with the stale one (CPython 3.11).
#: ``array``: ``fromlist`` / ``a[i] = v`` wrote the value into the freed buffer (a SIGSEGV of the worker, a
#: write into whatever reuses it), ``append`` / ``insert`` / ``extend`` grew the array by its old size
#: (uninitialized heap memory as items), ``tofile(f)`` went on reading 64 KiB blocks past the new buffer
#: into ``f.write`` (any memory after it, found by ``id()`` and ``buffer_info()``: round 16's read by
#: another door). ``bytearray``: ``%`` went on parsing the freed format, ``find`` / ``count`` / ``index`` /
#: ``rfind`` / ``rindex`` / ``endswith`` and ``in`` searched it for an ``__index__`` item or from an
#: ``__index__`` start (a SIGSEGV; positions in freed memory). Host code calls these natively on whatever
#: the model hands it (``UserList.append`` on ``self.data``, ``ChainMap.__contains__`` on each map,
#: ``bisect.insort``), so the sandbox's ``bytearray`` and ``array.array`` are subclasses (below) whose
#: methods convert such arguments before the real method holds the buffer, and whose results are of
#: the same subclass again: the real types are not handed out (_BY_ID), nor subclassed (_check_base).
_STALE_BUFFER_TYPES = (array.array, bytearray)
_array_typecode = array.array.typecode.__get__  # type: ignore[attr-defined]  # TypeError for a non-array


def _array_values(arr: Any, values: Any) -> list[Any]:
    """``values`` as ``arr`` would store them, converted in a new array no model code can reach: the
    model's hooks run before the real method, which then gets exact ints, floats or str."""
    return array.array(_array_typecode(arr), values).tolist()


def _exact_arg(x: Any) -> Any:
    """An argument bytearray's searches would convert with the model's ``__index__`` after taking the
    buffer, converted before. Passed as they are: what runs no model code there (ints, whose own
    subclasses CPython reads without ``__index__``; exact tuples of buffers; buffers whose type has no
    ``__index__``: CPython takes any object with one for an int, an own ``bytes`` subclass's too)."""
    if x is None or isinstance(x, int) or type(x) is tuple:
        return x
    if isinstance(x, (bytes, bytearray, array.array)) and not hasattr(type(x), "__index__"):
        return x
    return operator.index(x)


def _safe_buffer_type(real: type, module: str, checked: dict[str, Callable[..., Any]],
                      producers: tuple[str, ...]) -> type:
    """A subclass of ``real`` named like it, with ``checked`` in place of the real methods, and whose
    ``producers`` hand out what the real ones return, with each ``real`` in it made this subclass."""
    safe: type

    def rewrap(result: Any) -> Any:
        if type(result) is real:
            return safe(result) if real is bytearray else safe(result.typecode, result)
        if type(result) in (list, tuple):
            return type(result)(rewrap(x) for x in result)
        return result

    def producer(name: str) -> Callable[..., Any]:
        method = getattr(real, name)

        def produce(self: Any, /, *args: Any, **kwargs: Any) -> Any:
            return rewrap(method(self, *args, **kwargs))

        produce.__name__, produce.__qualname__, produce.__doc__ = name, f"{real.__name__}.{name}", method.__doc__
        return produce

    def in_place(name: str) -> Callable[..., Any]:
        method = getattr(real, name)

        def update(self: Any, other: Any, /) -> Any:
            return method(self, other)

        update.__name__, update.__qualname__, update.__doc__ = name, f"{real.__name__}.{name}", method.__doc__
        return update

    namespace: dict[str, Any] = {name: producer(name) for name in producers}
    for name in ("__iadd__", "__imul__"):
        # in place, as the real ones: with a Python __add__ / __mul__, ``a += b`` would call that instead
        namespace[name] = in_place(name)
    for name, method in checked.items():
        method.__name__, method.__qualname__ = name, f"{real.__name__}.{name}"
        method.__doc__ = getattr(real, name).__doc__
        namespace[name] = method
    namespace.update(__module__=module, __qualname__=real.__name__, __doc__=real.__doc__, __slots__=())
    safe = type(real.__name__, (real,), namespace)
    return safe


def _array_append(self: Any, value: Any, /) -> None:
    array.array.append(self, *_array_values(self, [value]))


def _array_insert(self: Any, i: Any, value: Any, /) -> None:
    array.array.insert(self, i, *_array_values(self, [value]))


def _array_extend(self: Any, iterable: Any, /) -> None:
    if not isinstance(iterable, array.array):  # an array is copied as memory by the real method
        iterable = array.array(_array_typecode(self), list(iterable))
    array.array.extend(self, iterable)


def _array_fromlist(self: Any, values: Any, /) -> None:
    if not isinstance(values, list):
        raise TypeError("arg must be list")
    array.array.fromlist(self, _array_values(self, values))


def _array_tofile(self: Any, f: Any, /) -> None:
    array.array.tofile(array.array.__copy__(self), f)  # a copy no model code can reach: f.write may resize self


def _array_setitem(self: Any, key: Any, value: Any, /) -> None:
    if not isinstance(key, slice):  # a slice takes an array, copied as memory
        value, = _array_values(self, [value])
    array.array.__setitem__(self, key, value)


_SafeArray = _safe_buffer_type(
    array.array, "array",
    {"append": _array_append, "insert": _array_insert, "extend": _array_extend, "fromlist": _array_fromlist,
     "tofile": _array_tofile, "__setitem__": _array_setitem},
    ("__getitem__", "__add__", "__mul__", "__rmul__", "__copy__", "__deepcopy__"))

#: what ``obj[k] = v`` / ``obj.attr = v`` may write besides the sandbox's own objects (``guarded_write``):
#: the sandbox's arrays, not the real ones (whose ``a[i] = v`` wrote into a buffer the model's
#: ``__index__`` freed: ``_array_setitem``)
_WRITABLE_TYPES = (dict, list, set, bytearray, collections.deque, _SafeArray)


def _bytearray_search(name: str) -> Callable[..., Any]:
    real = getattr(bytearray, name)

    def search(self: Any, /, *args: Any) -> Any:
        return real(self, *[_exact_arg(x) for x in args])

    return search


def _bytearray_contains(self: Any, item: Any, /) -> bool:
    return bytearray.__contains__(self, _exact_arg(item))


def _bytearray_mod(self: Any, args: Any, /) -> Any:
    return _SafeBytearray(bytes(self) % args)  # formatted from an immutable copy


_SafeBytearray = _safe_buffer_type(
    bytearray, "builtins",
    {**{name: _bytearray_search(name) for name in ("find", "rfind", "index", "rindex", "count", "startswith",
                                                    "endswith")},
     "__contains__": _bytearray_contains, "__mod__": _bytearray_mod},
    # what returns a bytearray (or a list or tuple of them)
    ("__getitem__", "__add__", "__mul__", "__rmul__", "capitalize", "center", "copy", "expandtabs", "join", "ljust",
     "lower", "lstrip", "partition", "removeprefix", "removesuffix", "replace", "rjust", "rpartition", "rsplit",
     "rstrip", "split", "splitlines", "strip", "swapcase", "title", "translate", "upper", "zfill"))


def _file_digest(fileobj: Any, digest: Any, /, *, _bufsize: int = 2**18) -> Any:
    """hashlib.file_digest: its ``readinto`` buffer is a real bytearray, handed to the model's file object
    (kept, it is resizable once the function returns), and its ``update`` got memoryviews of it."""
    digestobj = hashlib.new(digest) if isinstance(digest, str) else digest()
    if hasattr(fileobj, "getbuffer"):
        digestobj.update(fileobj.getbuffer())
        return digestobj
    if not (hasattr(fileobj, "readinto") and hasattr(fileobj, "readable") and fileobj.readable()):
        raise ValueError(f"'{fileobj!r}' is not a file-like object in binary reading mode.")
    buf = _SafeBytearray(_bufsize)
    while True:
        size = fileobj.readinto(buf)
        if size == 0:
            break
        digestobj.update(bytes(buf[:size]))
    return digestobj


#: list_ass_subscript (CPython 3.11) takes an extended slice's length (``l[::2]``) from the list, then turns
#: a value that is not a list or tuple into one, which runs the model's ``__iter__`` / ``__next__`` (a generator,
#: ``map`` of a model function): that shrinks the list (``del l[10:]``) and the items are then swapped in at the
#: old positions of the new, smaller buffer: a write of object pointers past it and a read of what lies there as
#: objects (a SIGSEGV of the worker). Such values are made a list first, before the real store takes the length:
#: the cells' ``l[k] = v`` (``_ListWriter``), ``super().__setitem__`` / ``L.__setitem__`` of an own list subclass
#: (``guarded_getattr``) and ``UserList.__setitem__`` (its ``self.data[i] = item``) all store through here.
def _list_setitem(lst: Any, key: Any, value: Any, /) -> None:
    if type(key) is slice and type(value) not in (list, tuple):
        value = list(value)
    list.__setitem__(lst, key, value)


class _ListWriter:
    """What ``guarded_write`` hands out for a list: its stores go through ``_list_setitem``'s check.
    Made by ``_list_writer`` (every ``l[i] = v`` of a cell makes one: kept to a slot write and one call)."""

    __slots__ = ("_target",)

    def __setitem__(self, key: Any, value: Any) -> None:
        # _list_setitem's check, inlined: this is every list store of a cell (a call more cost 30%)
        if type(key) is slice and type(value) not in (list, tuple):
            value = list(value)
        list.__setitem__(self._target, key, value)

    def __delitem__(self, key: Any) -> None:
        del self._target[key]

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._target, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._target, name)


_new_writer = object.__new__
_set_writer_target = _ListWriter._target.__set__  # type: ignore[attr-defined]


def _list_writer(target: list[Any]) -> _ListWriter:
    writer = _new_writer(_ListWriter)
    _set_writer_target(writer, target)
    return writer


def _stores_as_list(obj: Any) -> bool:
    """Whether ``obj[k] = v`` is list's own store (a list, or a subclass that keeps it)."""
    return isinstance(obj, list) and type(obj).__setitem__ is list.__setitem__


def _userlist_setitem(self: Any, i: Any, item: Any) -> None:
    if _stores_as_list(self.data):
        _list_setitem(self.data, i, item)  # see _list_setitem
    else:
        self.data[i] = item


def _pure_ordered_dict() -> type:
    """collections' pure-Python ``OrderedDict`` (the module's source, run with ``_collections`` lacking the C one).

    The C OrderedDict (CPython 3.11) looks a key up in the dict and then indexes its node table by the slot
    found; the lookup runs the model's ``__eq__`` for a key of the same hash, which clears the dict (freeing
    the table) or refills it: ``o.move_to_end(k)``, ``o.pop(k)``, ``del o[k]``, ``o[k] = v`` then read a
    freed or stale node (a SIGSEGV of the worker). The pure one keeps its links in a plain dict, whose lookup
    survives such a hook. Its methods are named after the class, kept in collections as
    ``_SandboxOrderedDict``, so that ``_checked_method`` finds their owner."""
    import _collections  # type: ignore[import-not-found]

    stand_in = types.ModuleType("_collections")
    stand_in.__dict__.update({k: v for k, v in vars(_collections).items() if k != "OrderedDict"})
    source = importlib.util.find_spec("collections").loader.get_source("collections")  # type: ignore[union-attr]
    namespace: dict[str, Any] = {"__name__": "collections", "__builtins__": builtins}
    saved = sys.modules["_collections"]
    sys.modules["_collections"] = stand_in
    try:
        exec(compile(source, collections.__file__ or "collections", "exec"), namespace)  # noqa: S102
    finally:
        sys.modules["_collections"] = saved
    pure = namespace["OrderedDict"]
    assert pure is not collections.OrderedDict and "move_to_end" in vars(pure)
    for value in vars(pure).values():
        func = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
        if type(func) is types.FunctionType:
            func.__qualname__ = f"_SandboxOrderedDict.{func.__name__}"
    collections._SandboxOrderedDict = pure  # type: ignore[attr-defined]
    return pure


_SafeOrderedDict = _pure_ordered_dict()


def _delitem(obj: Any, key: Any) -> None:
    del guarded_write(obj)[key]


#: Functions of allowed modules replaced by guarded versions, on every path.
_REPLACED_MODULE_ATTRS: dict[str, dict[str, Any]] = {
    "functools": {"update_wrapper": _update_wrapper, "wraps": _wraps},
    "contextlib": {"wraps": _wraps},
    # the real array type is not handed out (see _STALE_BUFFER_TYPES); ArrayType is array
    "array": {"array": _SafeArray, "ArrayType": _SafeArray},
    "hashlib": {"file_digest": _file_digest},
    "operator": {"attrgetter": _attrgetter, "methodcaller": _methodcaller, "getitem": guarded_getitem,
                 "setitem": _setitem, "delitem": _delitem},
}
_MODULE_PROXIES: dict[str, types.ModuleType] = {}


def _build_module_proxies() -> None:
    """``from functools import wraps`` reads the attribute natively (IMPORT_FROM), so
    such imports get a copy of the module with the replacements in place."""
    import dataclasses
    import functools

    _REPLACED_MODULE_ATTRS["dataclasses"] = {"dataclass": _own_class_decorator(dataclasses.dataclass, "dataclass"),
                                             "replace": _dataclass_replace}
    _REPLACED_MODULE_ATTRS["collections"] = {"namedtuple": _namedtuple, "OrderedDict": _SafeOrderedDict}
    collections.UserList.__setitem__ = _userlist_setitem  # type: ignore[method-assign]  # see _list_setitem

    # typing.no_type_check_decorator calls typing's own no_type_check on whatever the model's
    # decorator returns (a module, a host class): patched in the worker's typing module, which
    # that function looks it up in on each call
    no_type_check = _own_object_decorator(typing.no_type_check, "typing.no_type_check")
    _HARDENED[typing.no_type_check] = no_type_check
    typing.no_type_check = no_type_check  # type: ignore[assignment]
    _REPLACED_MODULE_ATTRS["typing"] = {"final": _own_object_decorator(typing.final, "typing.final"),
                                        "no_type_check": no_type_check,
                                        "get_origin": _get_origin, "get_args": _get_args,
                                        # they set an attribute on their argument (a host class, a module)
                                        "runtime_checkable": _own_object_decorator(typing.runtime_checkable,
                                                                                   "typing.runtime_checkable"),
                                        "dataclass_transform": _dataclass_transform,
                                        # typing.OrderedDict() calls its origin: the C one (see _pure_ordered_dict)
                                        "OrderedDict": typing._alias(  # type: ignore[attr-defined]
                                            _SafeOrderedDict, 2, name="OrderedDict")}
    _REPLACED_MODULE_ATTRS["abc"] = {"abstractmethod": _own_object_decorator(abc.abstractmethod, "abc.abstractmethod"),
                                     "abstractclassmethod": _own_abstract(abc.abstractclassmethod),
                                     "abstractstaticmethod": _own_abstract(abc.abstractstaticmethod)}
    _REPLACED_MODULE_ATTRS["functools"]["total_ordering"] = _own_class_decorator(
        functools.total_ordering, "total_ordering")
    _build_identity_tables()
    for name in ALLOWED_MODULES:
        real = sys.modules[name]
        denied = _DENIED_MODULE_ATTRS.get(name, frozenset())
        replaced = _REPLACED_MODULE_ATTRS.get(name, {})
        kept: dict[str, Any] = {}
        changed = bool(denied or replaced)
        for key, value in real.__dict__.items():
            if key in denied:
                continue
            try:
                vetted = replaced[key] if key in replaced else _vet(value)
            except SandboxPolicyError:
                # the object is denied under another module's name (numbers.ABCMeta is abc.ABCMeta)
                changed = True
                continue
            changed = changed or vetted is not value
            kept[key] = vetted
        if changed:
            proxy = types.ModuleType(name, real.__doc__)
            proxy.__dict__.update(kept)
            _MODULE_PROXIES[name] = proxy


def _build_identity_tables() -> None:
    """Fill _BY_ID: what _DENIED_MODULE_ATTRS and _REPLACED_MODULE_ATTRS name, by the object
    itself, so that a re-export (``numbers.ABCMeta``, ``functools.namedtuple``,
    ``dataclasses.FunctionType``) or a copy of a module's dict is caught too."""
    for modname, names in _DENIED_MODULE_ATTRS.items():
        module = sys.modules[modname]
        for attr in names:
            value = getattr(module, attr, _MISSING)
            if value is _MISSING:
                continue  # a platform's function this one lacks (time.pthread_getcpuclockid)
            _BY_ID[id(value)] = (value, _DENY)
            # named where it is defined, not after whichever re-export came first
            home, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
            _DENIED_NAMES[id(value)] = (f"{home}.{qualname}" if type(home) is str and type(qualname) is str
                                        else f"{modname}.{attr}")
    # unbound ABCMeta.register: ABCMeta.register(SomeABC, cls) is ABC.register under another spelling
    _BY_ID[id(abc.ABCMeta.register)] = (abc.ABCMeta.register, _DENY)
    _DENIED_NAMES[id(abc.ABCMeta.register)] = "ABCMeta.register"
    for modname, replacements in _REPLACED_MODULE_ATTRS.items():
        module = sys.modules[modname]
        for attr, replacement in replacements.items():
            value = module.__dict__.get(attr)
            if value is not None and value is not replacement:
                _BY_ID[id(value)] = (value, replacement)
    for real, stand_in in _STAND_INS.items():
        _BY_ID[id(real)] = (real, stand_in)
    _BY_ID[id(bytearray)] = (bytearray, _SafeBytearray)  # see _STALE_BUFFER_TYPES
    # The real builtins the sandbox's builtins replace or refuse, wherever host code holds them (a
    # host function's result, a host container): a guarded read hands out the sandbox's version
    # (``enum.pickle_by_enum_name(m, 2)[0]`` was the real getattr).
    for name in (*_GUARDED_BUILTINS, *_REFUSED_BUILTINS):
        real = getattr(builtins, name, _MISSING)
        if real is _MISSING:
            continue  # exit, quit, help: put there by site, which may not have run
        _BY_ID[id(real)] = (real, _GUARDED_BUILTINS.get(name, _DENY))
        _DENIED_NAMES[id(real)] = f"builtins.{name}"
    # the unbound str methods, wherever they are read from (a class dict copied by update_wrapper):
    # guarded_getattr hands out the guarded ones only when it sees them read off str
    _BY_ID[id(str.format)] = (str.format, _safe_format)
    _BY_ID[id(str.format_map)] = (str.format_map, _safe_format_map)
    # methods that call the real str.format on the instance's data; bound ones are rebound by _vet
    user_string = collections.UserString
    _BY_ID[id(user_string.format)] = (user_string.format, _userstring_format)
    _BY_ID[id(user_string.format_map)] = (user_string.format_map, _userstring_format_map)
    for original, checked in _HARDENED.items():
        # the unpatched original may still be held somewhere (a module that imported it by name)
        replacement = _BY_ID.get(id(checked), (checked, checked))[1]
        _BY_ID[id(original)] = (original, replacement)


#: Modules whose types copy may rebuild from their reduction (plain data, no host state;
#: ast: the transformer copies nodes in the worker).
_COPYABLE_MODULES = frozenset({"builtins", "collections", "datetime", "decimal", "fractions", "array", "re", "enum",
                               "uuid", "ast"})


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
        if not _defined_in_sandbox(x) and type(x).__module__.partition(".")[0] not in _COPYABLE_MODULES:
            # the rebuild would pass the real state of a host object (its __dict__) through
            # the memo, which a model __deepcopy__ or a model memo dict can read
            raise SandboxPolicyError(f"copying {type(x).__name__} objects is not available in the sandbox")
        if func is getattr:
            func = guarded_getattr
        checked_args = tuple(args)

        def build(*a: Any) -> Any:
            y = func(*a)
            if type(y) is not type(x) and not _defined_in_sandbox(y):
                raise copy.Error(f"copying {type(x).__name__} gave a {type(y).__name__}; refused in the sandbox")
            return y

        if isinstance(state, tuple) and len(state) == 2:
            # copy unpacks any 2-tuple (a subclass too) as (dict state, slot state) and setattr's
            # the slots by name: check exact copies of both, and hand on only those
            state = tuple(None if part is None else dict(part) for part in state)
            for part in state:
                for key in part or ():
                    _check_set_name(key, "copying")
        return original(x, memo, build, checked_args, state, listiter, dictiter, deepcopy=deepcopy)

    copy._reconstruct = _reconstruct  # type: ignore[attr-defined]

    def _deepcopy_method(x: Any, memo: Any) -> Any:
        # copy rebinds a bound method's function to the deep copy of its self, which a model
        # __deepcopy__ chooses: a host class's method bound to any object (see _checked_method)
        self = copy.deepcopy(x.__self__, memo)
        if type(self) is not type(x.__self__) and not _defined_in_sandbox(self):
            raise copy.Error(f"copying a method of {type(x.__self__).__name__} gave a {type(self).__name__} as "
                             "its self; refused in the sandbox")
        return types.MethodType(x.__func__, self)

    copy._deepcopy_dispatch[types.MethodType] = _deepcopy_method  # type: ignore[attr-defined]


def _check_module_name(kwargs: dict[str, Any], what: str) -> None:
    """Model code never chooses a ``__module__``: trusted code looks the module up by it
    (``sys.modules[cls.__module__]``) and whether an object is the sandbox's own hangs on it."""
    for key in ("module", "qualname"):
        value = kwargs.get(key)
        if value is not None and not (type(value) is str and value == SANDBOX_MODULE and key == "module"):
            raise SandboxPolicyError(f"{what}({key}=...) is not available in the sandbox")


def _namedtuple(typename: Any, field_names: Any, **kwargs: Any) -> Any:
    _check_module_name(kwargs, "namedtuple")
    # left to itself, namedtuple would name this module (its caller's) as the class's
    kwargs["module"] = SANDBOX_MODULE
    return collections.namedtuple(typename, field_names, **kwargs)


#: original -> the patched version left in its module (the patched one is handed out like the original)
_HARDENED: dict[Any, Any] = {}


def _harden_wraps() -> None:
    """functools.update_wrapper copies ``wrapped.__dict__`` into the wrapper. Trusted code
    calls it (through the real ``wraps``) on what model code passes: ``contextmanager(m)``,
    a ContextDecorator, ``typing.no_type_check_decorator(m)``. With a module that is the
    whole module namespace, denied and replaced names included, copied into a host
    function. Patched in the worker's functools module, whose ``wraps`` (the one
    contextlib and typing imported) looks ``update_wrapper`` up there on each call."""
    import functools

    original = functools.update_wrapper

    def update_wrapper(wrapper: Any, wrapped: Any, assigned: Any = functools.WRAPPER_ASSIGNMENTS,
                       updated: Any = functools.WRAPPER_UPDATES) -> Any:
        if isinstance(wrapped, types.ModuleType) or isinstance(wrapper, types.ModuleType):
            raise SandboxPolicyError("a module cannot be wrapped (or be the wrapper) in the sandbox")
        own = wrapped.__func__ if type(wrapped) is types.MethodType else wrapped  # a method's dict is its function's
        if not (_sandbox_function(own) or _defined_in_sandbox(own)):
            # A host object's __dict__ is not the sandbox's to copy: a host class's holds its raw
            # methods (lru_cache(str).format was the real str.format, whose fields walk attributes
            # with the real getattr), a host function's whatever its module put there. Only the
            # names are copied then, as functools.wraps does in the sandbox.
            updated = ()
        return original(wrapper, wrapped, assigned, updated)

    update_wrapper.__doc__ = original.__doc__
    functools.update_wrapper = update_wrapper
    _HARDENED[original] = update_wrapper


def _harden_dataclasses() -> None:
    """dataclasses.asdict, astuple (and replace) read every field of an instance with the real
    getattr, by the names ``fields(obj)`` gives: those of the class, or of a dict planted in the
    instance's ``__dict__``. A name the guards refuse on that instance (a private attribute a host
    base class defines) was read natively and its value handed to model code (a ``dict_factory``,
    the class's ``__init__``). Patched in the worker's dataclasses module, whose functions look
    ``fields`` up there on each call: each field of an instance is checked as a guarded read."""
    original = dataclasses.fields

    def fields(class_or_instance: Any) -> Any:
        result = original(class_or_instance)
        if not isinstance(class_or_instance, type):
            for f in result:
                _check_native_read(class_or_instance, f.name, "dataclass field")
        return result

    fields.__doc__ = original.__doc__
    dataclasses.fields = fields
    _HARDENED[original] = fields


def _harden_enum() -> None:
    """``Enum('E', names)`` (the functional API) makes members of any name, dunders too
    (``__del__``, ``__getattribute__``, ``__class__``): what a class statement may not
    define. Member names starting with ``_`` are refused there; patched in the worker's
    enum module, where the functional API lives."""
    original = enum.EnumType._create_  # type: ignore[attr-defined]

    def _create_(cls: Any, class_name: Any, names: Any, **kwargs: Any) -> Any:
        # Read once, into exact data: a model mapping or iterable may answer differently
        # the second time (the original reads it again).
        checked: Any
        if isinstance(names, str):
            checked = str.__str__(names)
            members: list[Any] = checked.replace(",", " ").split()
        elif isinstance(names, collections.abc.Mapping):
            checked = [(key, names[key]) for key in list(names)]
            members = [key for key, _ in checked]
        else:
            items = list(names)
            checked = [item if isinstance(item, str) else tuple(item) for item in items]
            members = [item if isinstance(item, str) else item[0] for item in checked]
            checked = [str.__str__(item) if isinstance(item, str) else item for item in checked]
        for member in members:
            if type(member) is not str or member.startswith("_"):
                raise SandboxPolicyError(f"enum member name {member!r} is not allowed: names starting with '_' "
                                         "are private (and dunders are methods)")
        _check_module_name(kwargs, "Enum")
        mixin = kwargs.get("type")
        if mixin is not None:
            # The functional API builds the class with metacls.__new__, past the class statement's
            # _check_base: Enum('E', [], type=type(list[int])) was a class of the sandbox deriving
            # from GenericAlias, whose _new_member_ made one forwarding every read (private names
            # too, as the sandbox's own) to an origin of the caller's choice: dataclasses._create_fn.
            _check_base(mixin)
        # the original finds the caller's module from its frame, which this wrapper now is
        kwargs["module"] = SANDBOX_MODULE
        return original(cls, class_name, checked, **kwargs)

    enum.EnumType._create_ = _create_  # type: ignore[attr-defined]

    # EnumType wraps each member's value in a _proto_member, whose __set_name__ (which type.__new__
    # calls for every value in a class's dict) turns it into a member by the class's own bookkeeping
    # (see ENUM_BOOKKEEPING). A model class gets hold of one (``type(self).B`` in a member's __init__
    # while B is still one; then ``type(it)(value)``) and puts it in an ordinary class whose body
    # defines ``_new_member_``, ``_use_args_`` and the rest: the same native writes and ``__init__``
    # call on whatever that returns. Only an enum class, whose bookkeeping EnumType wrote, may own one.
    proto = enum._proto_member  # type: ignore[attr-defined]
    set_name = proto.__set_name__

    def __set_name__(self: Any, enum_class: Any, member_name: Any) -> None:
        if not isinstance(enum_class, enum.EnumType):
            raise SandboxPolicyError("an enum member can be made only in an enum class")
        set_name(self, enum_class, member_name)

    __set_name__.__doc__ = set_name.__doc__
    proto.__set_name__ = __set_name__


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
        try:
            _vet(value)  # denied under another module's name (from numbers import ABCMeta)
        except SandboxPolicyError as e:
            raise ImportError(f'"from {name} import {item}" is not allowed in the sandbox: {e}') from None
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
    if issubclass(cls, type):
        return _one_arg_type
    # FunctionType(code, globals) runs a code object under globals of the caller's choice;
    # the others build code or bind it. A named stand-in keeps type(f).__name__ working.
    return _STAND_INS.get(cls, cls)


def _stand_in(real: type) -> type:
    def __new__(cls: Any, *args: Any, **kwargs: Any) -> Any:
        raise SandboxPolicyError(f"{real.__name__}() cannot be called in the sandbox; write a def or lambda")

    return type(real.__name__, (), {"__module__": "builtins", "__new__": __new__,
                                    "__doc__": f"stands in for {real.__name__} in the sandbox"})


_STAND_INS = {real: _stand_in(real) for real in (types.FunctionType, types.CodeType, types.MethodType, types.CellType)}


class _SuperType(type):
    """The metaclass of the sandbox's ``super``: ``isinstance(x, super)`` and ``issubclass`` ask the real one."""

    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, super)

    def __subclasscheck__(cls, sub: Any) -> bool:
        return sub is cls or issubclass(sub, super)

    def __repr__(cls) -> str:
        return repr(super)


class _Super(metaclass=_SuperType):
    """The sandbox's ``super``: the real one, over the sandbox's own objects only.

    ``super(T, x)`` proxies ``x``'s attributes past ``T``: over a host object, the host's methods that the
    sandbox's own classes override for safety (``super(type(a), a).insert`` is the real ``array.insert``, see
    _STALE_BUFFER_TYPES). guarded_getattr refuses to read them off such a proxy, but host code calls methods on
    whatever the model hands it, natively: ``bisect.insort(super(type(a), a), I(), 0, 0)`` called the real
    ``array.insert`` with a resizing ``__index__`` (round 17's SIGSEGV again), and a class pattern read them
    too. So no such proxy is made: two arguments need a second that is the sandbox's own; the zero-argument
    form (``super()`` in a method, whose first argument is always the sandbox's own there) is what CPython's
    does, from the caller's frame; the one-argument (unbound) form is refused."""

    __slots__ = ()

    def __new__(cls, *args: Any) -> Any:
        if not args:
            proxy = _zero_arg_super(sys._getframe(1))
        elif len(args) == 1:
            raise SandboxPolicyError("super() with one argument (an unbound super) is not available in the sandbox")
        else:
            proxy = super(*args)
        if not _defined_in_sandbox(proxy.__self__):
            raise SandboxPolicyError("super() proxies the sandbox's own objects only")
        return proxy


_Super.__name__ = _Super.__qualname__ = "super"
_Super.__module__ = "builtins"
_Super.__doc__ = super.__doc__
_STAND_INS[super] = _Super  # type(super()) is the sandbox's super; the real one, read anywhere, is replaced (_BY_ID)


def _zero_arg_super(frame: types.FrameType) -> super:
    """What CPython's ``super()`` without arguments does (``super_init_without_args``), for ``frame``: its
    ``__class__`` cell and first argument."""
    code = frame.f_code
    if not code.co_argcount:
        raise RuntimeError("super(): no arguments")
    values = frame.f_locals
    first = values.get(code.co_varnames[0], _MISSING)
    if first is _MISSING:
        raise RuntimeError("super(): arg[0] deleted")
    if "__class__" not in code.co_freevars:
        raise RuntimeError("super(): __class__ cell not found")
    klass = values.get("__class__", _MISSING)
    if klass is _MISSING:
        raise RuntimeError("super(): empty __class__ cell")
    if not isinstance(klass, type):
        raise RuntimeError(f"super(): __class__ is not a type ({type(klass).__name__})")
    return super(klass, first)


def _refuser(message: str) -> Callable[..., Any]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise SandboxPolicyError(message)

    return refuse


#: The builtins the sandbox's own functions stand in for (also where host code hands the real ones out).
_GUARDED_BUILTINS: dict[str, Any] = {"__import__": guarded_import, "getattr": guarded_getattr,
                                     "hasattr": guarded_hasattr, "setattr": _guarded_setattr,
                                     "delattr": _guarded_delattr}


def _build_builtins() -> dict[str, Any]:
    b = dict(safe_builtins)
    for name in (
        "all", "any", "ascii", "bin", "bytearray", "bytes", "dict", "dir", "enumerate",
        "filter", "format", "frozenset", "iter", "list", "map", "max", "min", "next",
        "reversed", "set", "sorted", "sum", "tuple", "zip", "property", "staticmethod",
        "classmethod", "NotImplemented", "StopAsyncIteration", "RecursionError",
        "TimeoutError", "ConnectionError", "PermissionError", "FileNotFoundError",
        # object's dunders are foreign like every other host class's
        "object",
    ):
        b[name] = getattr(builtins, name)
    b.update(_GUARDED_BUILTINS, type=_one_arg_type, SandboxPolicyError=SandboxPolicyError,
             bytearray=_SafeBytearray,  # see _STALE_BUFFER_TYPES
             super=_Super)  # super() proxies the sandbox's own objects only (see _Super, _dunder_allowed)
    for name, message in _REFUSED_BUILTINS.items():
        b[name] = _refuser(message)
    return b


class CappedText:
    """Text kept up to ``limit`` characters; the rest is only counted (``dropped``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0
        self.dropped = 0

    def add(self, text: str) -> None:
        text = str.__str__(text)  # a str subclass's __len__ would understate what is kept
        room = self.limit - self.size
        if room >= len(text):
            self.parts.append(text)
            self.size += len(text)
        else:
            if room > 0:
                self.parts.append(text[:room])
                self.size += room
            self.dropped += len(text) - max(room, 0)

    def text(self) -> str:
        return "".join(self.parts)


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
        self.kept = CappedText(self.max_chars)

    def write(self, text: str) -> None:
        self.kept.add(text)
        sys.stdout.write(text)

    def __call__(self) -> str:
        text = self.kept.text()
        if self.kept.dropped:
            text += f"\n... [printed output truncated: {self.kept.dropped:,} more characters not kept]\n"
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
        # `print` used as a value (not called) in a cell's trailing expression compiles to this
        # name, which RestrictedPython sets up only in statement bodies that call print()
        "_print": PrintCollector(),
        "_match_class_": _match_class,
        "_match_value_": _PatternValue,
        "_match_bind_": _match_bind,
        "_match_check_": _match_check,
    }
