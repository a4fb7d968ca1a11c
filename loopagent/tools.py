"""Tools: the user's own functions, callable from the REPL by the model's code.

A tool runs in the parent process (never in the sandbox); the REPL holds only a stub
that sends its arguments over the same IPC as ``llm_query``. Arguments and results
cross as plain data (None, bool, int, float, str, and lists, tuples and dicts with
str keys of them), checked on the host side, so no host object reaches model code.

Example::

    def search(query: str, k: int = 5) -> list[str]:
        \"\"\"Titles of the k catalogue entries that best match query.\"\"\"
        return catalogue.search(query)[:k]

    async def price(sku: str) -> float:
        \"\"\"Today's price of an item, in EUR.\"\"\"
        return await shop.price(sku)

    rlm = RLM(root, tools={"search": search, "price": price}, child_tools={})
    # in the REPL: hits = search("red shoes", k=3); p = price(hits[0])
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
import keyword
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from loopagent.compaction import HISTORY_VARIABLE
from loopagent.environments import RESERVED_NAMES as ENVIRONMENT_NAMES
from loopagent.errors import ConfigError, LoopagentError

#: The functions the controller puts in every REPL (``SHOW_VARS`` is reserved for parity with
#: the official RLM library). The one list of them: tool names are checked against it, and a
#: test checks that every name the controller registers is in it.
REPL_FUNCTIONS: tuple[str, ...] = ("llm_query", "llm_batch", "rlm_query", "rlm_batch", "FINAL", "FINAL_VAR",
                                   "SHOW_VARS")

#: Python's builtins stay what model code expects them to be (a tool named ``len`` or ``open``
#: would silently change what ordinary code does).
_BUILTIN_NAMES = frozenset(n for n in dir(builtins) if not n.startswith("_"))

#: Variables the controller sets in the REPL (compaction keeps the whole conversation in ``history``).
REPL_VARIABLES: tuple[str, ...] = (HISTORY_VARIABLE,)

#: Names a tool may not take: the controller's functions and variables, what the environment
#: reserves (``context``), and Python's builtins.
RESERVED_NAMES: frozenset[str] = (frozenset(REPL_FUNCTIONS) | frozenset(REPL_VARIABLES) | ENVIRONMENT_NAMES
                                  | _BUILTIN_NAMES)

#: Nesting levels of a tool's arguments or result (the sandbox refuses deeper host-call arguments too).
MAX_DEPTH = 64
#: Characters of a docstring's first paragraph shown in the system prompt.
SUMMARY_CHARS = 400

Tools = Mapping[str, Callable[..., Any]]


class ToolConfigError(ConfigError):
    """A bad ``tools`` or ``child_tools`` argument: not a dict, a bad or reserved name, a value that
    is not a function."""


class NotPlainDataError(LoopagentError, TypeError):
    """A tool's argument or result that is not plain data (raised to the model's code)."""


@dataclass(frozen=True)
class Tool:
    """One user function, as the REPL sees it.

    Example::

        tool = Tool.of("search", search)
        tool.describe()   # "search(query: str, k: int = 5) -> list[str]: Titles of the k ..."
    """

    name: str
    fn: Callable[..., Any]
    signature: inspect.Signature | None
    summary: str
    is_async: bool

    @classmethod
    def of(cls, name: str, fn: Callable[..., Any], *, argument: str = "tools") -> Tool:
        """Check ``name`` and ``fn`` and describe them; :class:`ToolConfigError` when either is unusable."""
        _check_name(name, argument)
        if not callable(fn):
            raise ToolConfigError(
                f"{argument}[{name!r}] is a {type(fn).__name__}, not a function: give each tool a callable, "
                f"e.g. {argument}={{{name!r}: my_function}}"
            )
        if inspect.isclass(fn):
            raise ToolConfigError(
                f"{argument}[{name!r}] is the class {fn.__name__}: calling it would hand the model an instance, "
                "which cannot cross into the REPL; give a function (or an instance with __call__) that returns "
                "plain data"
            )
        return cls(name=name, fn=fn, signature=_signature(fn), summary=_summary(fn), is_async=_is_async(fn))

    def describe(self) -> str:
        """The tool's line in the system prompt: name, signature and the docstring's first paragraph."""
        head = f"{self.name}{self.signature if self.signature is not None else '(...)'}"
        return f"{head}: {self.summary}" if self.summary else head

    async def invoke(self, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any], *,
                     max_result_chars: int | None = None) -> Any:
        """Call the tool with a REPL call's arguments; returns its result as plain data.

        Arguments are checked as plain data and against the signature before the tool runs;
        a sync tool runs in a worker thread (it must not hold up the event loop, where the
        run's other calls wait), an async one is awaited. The tool's own exceptions pass
        unchanged; a result that is not plain data (or larger than ``max_result_chars``)
        raises :class:`NotPlainDataError`.
        """
        args = [to_plain(a, f"argument {i + 1} of {self.name}()") for i, a in enumerate(args)]
        kwargs = {k: to_plain(v, f"argument {k!r} of {self.name}()") for k, v in kwargs.items()}
        if self.signature is not None:
            try:
                self.signature.bind(*args, **kwargs)
            except TypeError as e:
                raise TypeError(f"{self.name}{self.signature}: {e}") from None
        if self.is_async:
            value = await self.fn(*args, **kwargs)
        else:
            value = await asyncio.to_thread(self.fn, *args, **kwargs)
            if inspect.isawaitable(value):  # a sync wrapper (partial, decorator) around a coroutine function
                value = await value
        return to_plain(value, f"{self.name}() returned", max_chars=max_result_chars, result=True)


def build_tools(tools: Tools | None, *, argument: str = "tools") -> dict[str, Tool]:
    """Checked :class:`Tool` objects from a ``{name: callable}`` mapping (None: no tools).

    Example::

        build_tools({"search": search})["search"].describe()
    """
    if tools is None:
        return {}
    if not isinstance(tools, Mapping):
        hint = " such as {f.__name__: f for f in functions}" if isinstance(tools, (list, tuple, set)) else ""
        raise ToolConfigError(
            f"{argument} must be a dict of name -> function{hint}, e.g. {argument}={{'search': search}}; "
            f"got a {type(tools).__name__}"
        )
    return {name: Tool.of(name, fn, argument=argument) for name, fn in tools.items()}


def _check_name(name: Any, argument: str) -> None:
    if not isinstance(name, str):
        raise ToolConfigError(f"{argument} names must be str (the name code calls the tool by), got {name!r}")
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ToolConfigError(
            f"tool name {name!r} in {argument} is not a Python identifier: code calls a tool by its name, so use "
            "letters, digits and underscores, not starting with a digit, and no keyword (e.g. 'search_docs')"
        )
    if name.startswith("_"):
        raise ToolConfigError(
            f"tool name {name!r} in {argument} starts with '_': the REPL keeps underscored names for its own "
            "machinery; drop the underscore"
        )
    if name in RESERVED_NAMES:
        what = ("the loaded context" if name in ENVIRONMENT_NAMES
                else "a function the REPL already has" if name in REPL_FUNCTIONS
                else "a variable the controller sets (compaction's full history)" if name in REPL_VARIABLES
                else "a Python builtin")
        raise ToolConfigError(
            f"tool name {name!r} in {argument} would shadow {what} in the REPL; rename the tool "
            f"(e.g. 'my_{name}')"
        )


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn, eval_str=True)
    except Exception:  # names in string annotations that do not resolve, or a signature-less builtin
        try:
            return inspect.signature(fn)
        except (TypeError, ValueError):
            return None


def _summary(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn) or ""
    if not doc and not inspect.isroutine(fn) and callable(fn):
        doc = inspect.getdoc(type(fn).__call__) or ""
    first = " ".join(doc.strip().split("\n\n", 1)[0].split())
    return first if len(first) <= SUMMARY_CHARS else first[: SUMMARY_CHARS - 1] + "…"


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or (
        not inspect.isroutine(fn) and inspect.iscoroutinefunction(type(fn).__call__)
    )


_PLAIN_NAMES = "None, bool, int, float, str, and lists, tuples and dicts with str keys of them"
_HINTS: dict[str, str] = {
    "bytes": "decode it to str", "bytearray": "decode it to str", "set": "return a sorted list",
    "frozenset": "return a sorted list", "datetime": "return its isoformat()", "date": "return its isoformat()",
    "Decimal": "return a float or str", "Path": "return str(path)", "PosixPath": "return str(path)",
}


def to_plain(value: Any, where: str, *, max_chars: int | None = None, result: bool = False) -> Any:
    """``value`` rebuilt from exact builtin types (subclasses such as an IntEnum or an OrderedDict
    become their base type, tuples stay tuples); :class:`NotPlainDataError` naming the first part
    that is not plain data, or when it holds more than ``max_chars`` characters of text (strings,
    plus one per other item).

    Example::

        to_plain({"n": 1, "xs": (1, 2)}, "search() returned")   # {'n': 1, 'xs': (1, 2)}
        to_plain(object(), "argument 1 of f()")                  # NotPlainDataError
    """
    budget = [max_chars]

    def spend(n: int) -> None:
        if budget[0] is not None:
            budget[0] -= n
            if budget[0] < 0:
                raise NotPlainDataError(
                    f"{where} more than {max_chars:,} characters of data, more than a tool result may carry into "
                    "the REPL (the sandbox's max_message_mb): return less, e.g. a slice, a page or a summary"
                )

    def at(path: tuple[Any, ...]) -> str:
        # Built only for an error: built per item, a long key would be copied once for every item below it
        return where + "".join(f"[{part!r}]" for part in path)

    def walk(v: Any, path: tuple[Any, ...], depth: int) -> Any:
        if v is None or v is True or v is False:
            spend(1)
            return v
        if isinstance(v, str):
            spend(len(v) + 1)
            return v if type(v) is str else str.__str__(v)
        if isinstance(v, int):
            spend(1)
            return v if type(v) is int else int.__int__(v)
        if isinstance(v, float):
            spend(1)
            return v if type(v) is float else float.__float__(v)
        if isinstance(v, (list, tuple, dict)):
            if depth >= MAX_DEPTH:
                raise NotPlainDataError(f"{at(path)} nests deeper than {MAX_DEPTH} levels (or contains itself)")
            spend(1)
            if isinstance(v, dict):
                out = {}
                for key, item in list(v.items()):
                    if not isinstance(key, str):
                        raise NotPlainDataError(
                            f"{at(path)} has the key {_short(key)} ({type(key).__name__}): dict keys must be str"
                        )
                    key = key if type(key) is str else str.__str__(key)
                    spend(len(key))
                    out[key] = walk(item, (*path, key), depth + 1)
                return out
            items = [walk(item, (*path, i), depth + 1) for i, item in enumerate(list(v))]
            # a namedtuple is a tuple subclass: rebuilt as a plain tuple
            return items if isinstance(v, list) else tuple(items)
        kind = type(v)
        name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        hint = _HINTS.get(kind.__name__)
        if hint is None and hasattr(v, "model_dump"):
            hint = "return its model_dump()"
        elif hint is None and hasattr(kind, "__dataclass_fields__"):
            hint = "return dataclasses.asdict(value)"
        what = "tools return" if result else "tools take"
        raise NotPlainDataError(
            f"{at(path)} is a {name}, which is not plain data: {what} {_PLAIN_NAMES}"
            + (f" ({hint})" if hint else "")
        )

    return walk(value, (), 0)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"


def shown(value: Any, limit: int | None) -> str:
    """A plain value as Python literal text for the trajectory, at most about ``limit`` characters
    and marked where it was cut (a huge result is never written out whole first)."""
    if limit is None:
        return repr(value)
    if isinstance(value, str):
        head = repr(value[:limit])
        return head if len(value) <= limit else f"{head}... [{len(value) - limit:,} more characters not logged]"
    r = reprlib.Repr()
    r.maxstring = r.maxother = max(limit, 40)
    r.maxlist = r.maxtuple = r.maxdict = max(limit // 4, 6)
    r.maxlevel = 12
    text = r.repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... [{len(text) - limit:,} more characters not logged]"


def describe_error(error: BaseException) -> str:
    """``Type: message`` of a tool's exception, even one whose ``__str__`` fails."""
    try:
        message = str(error)
    except Exception:
        message = "(its message could not be read)"
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def shown_call(args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any], limit: int | None) -> str:
    """A call's arguments as they would be written in code: ``'red shoes', k=3``."""
    parts = [shown(a, limit) for a in args] + [f"{k}={shown(v, limit)}" for k, v in kwargs.items()]
    return ", ".join(parts)


__all__ = ["MAX_DEPTH", "REPL_FUNCTIONS", "RESERVED_NAMES", "NotPlainDataError", "Tool", "ToolConfigError",
           "Tools", "build_tools", "to_plain"]
