"""The user's own tools in the REPL: calls, errors, plain-data checks, child runs, prompts, bad input, security."""

from __future__ import annotations

import asyncio
import collections
import enum
import io
import os
import textwrap
import threading

import pytest
from rich.console import Console

from loopagent import RLM, ConfigError
from loopagent.backends.scripted import ScriptedBackend
from loopagent.environments import SandboxREPL
from loopagent.show import render
from loopagent.tools import REPL_FUNCTIONS, NotPlainDataError, Tool, ToolConfigError, build_tools, to_plain
from loopagent.trajectory import read_trajectory
from loopagent.view import load_log
from loopagent.view.model import page_data


def repl(code: str) -> str:
    return f"```repl\n{textwrap.dedent(code).strip()}\n```"


def tool_events(result):
    return [e for e in read_trajectory(result.trajectory) if e.type == "tool_call"]


def last_message(backend: ScriptedBackend, call: int) -> str:
    return backend.calls[call]["messages"][-1]["content"]


def search(query: str, k: int = 2) -> list[str]:
    """Titles of the k catalogue entries that best match ``query``.

    This second paragraph is for humans only and must not reach the prompt.
    """
    return [f"{query}-{i}" for i in range(k)]


async def price(sku: str) -> float:
    """Today's price of an item, in EUR."""
    await asyncio.sleep(0)
    return {"a-0": 2.5, "a-1": 4.0}[sku]


# -- calls ------------------------------------------------------------------------------------------
def test_sync_and_async_tools_run_in_the_parent_and_their_results_are_used(tmp_path):
    threads: dict[str, int] = {}

    def where_sync(tag: str) -> str:
        threads["sync"] = threading.get_ident()
        return tag

    async def where_async(tag: str) -> str:
        threads["loop"] = threading.get_ident()
        return tag

    root = ScriptedBackend([
        repl("hits = search('a', k=2)\nprices = [price(h) for h in hits]\nprint(hits, prices)"),
        repl("where_sync('s'); where_async('a')\nFINAL(f'{hits[1]} costs {max(prices)}')"),
    ])
    rlm = RLM(root, tools={"search": search, "price": price, "where_sync": where_sync, "where_async": where_async},
              log_dir=tmp_path)
    result = rlm.run("Which is dearest?", context="catalogue")
    assert result.answer == "a-1 costs 4.0" and result.finished
    assert "['a-0', 'a-1'] [2.5, 4.0]" in last_message(root, 1)
    # a sync tool runs in a worker thread, never on the event loop the async ones run on
    assert threads["sync"] != threads["loop"]
    events = tool_events(result)
    assert [(e.name, e.arguments, e.result, e.error) for e in events[:3]] == [
        ("search", "'a', k=2", "['a-0', 'a-1']", None),
        ("price", "'a-0'", "2.5", None),
        ("price", "'a-1'", "4.0", None),
    ]
    assert all(e.duration_s >= 0 and e.depth == 0 for e in events)
    execs = [e for e in read_trajectory(result.trajectory) if e.type == "repl_exec"]
    assert execs[0].host_calls == 3


def test_a_blocking_sync_tool_leaves_the_event_loop_free_for_sibling_runs():
    """Two child runs at once: one's sync tool blocks until the other's async tool has run.
    Were the sync tool run on the event loop, the async one could not run and it would time out."""
    released = threading.Event()

    def wait_for_other() -> bool:
        return released.wait(timeout=20)

    async def release() -> str:
        released.set()
        return "released"

    root = ScriptedBackend([repl("FINAL(rlm_batch(['wait', 'release']))")])

    def child(messages, loops):
        query = messages[-1]["content"]
        return repl("FINAL(str(wait_for_other()))" if query == "wait" else "FINAL(release())")

    rlm = RLM(root, ScriptedBackend(child, name="child"), max_depth=2,
              tools={"wait_for_other": wait_for_other, "release": release})
    assert rlm.run("q", context="c").answer == '["True", "released"]'


def test_a_raising_tool_shows_the_model_its_error_and_the_run_goes_on(tmp_path):
    def lookup(key: str) -> str:
        raise KeyError(f"no entry {key!r}")

    root = ScriptedBackend([
        repl("lookup('zebra')"),
        repl("try:\n    lookup('ant')\nexcept Exception as e:\n    caught = str(e)\nFINAL(caught)"),
    ])
    result = RLM(root, tools={"lookup": lookup}, log_dir=tmp_path).run("q", context="c")
    seen = last_message(root, 1)
    assert "HostFunctionError: lookup() failed: KeyError:" in seen and "no entry 'zebra'" in seen
    assert result.finished and "lookup() failed: KeyError" in result.answer
    events = tool_events(result)
    assert [e.error_type for e in events] == ["KeyError", "KeyError"]
    assert events[0].result is None and "no entry 'zebra'" in events[0].error


def test_results_that_are_not_plain_data_are_errors_to_the_model_not_crashes(tmp_path):
    class Row:
        pass

    def make(kind: str):
        return {"object": Row(), "int_keys": {1: "a"}, "set": {1, 2}, "bytes": b"x", "nested": {"a": [1, (2, Row())]},
                "cycle": (lst := []) or lst.append(lst) or lst, "big": "x" * 3_000_000}[kind]

    kinds = ["object", "int_keys", "set", "bytes", "nested", "cycle", "big"]
    code = "out = []\n" + "".join(
        f"try:\n    make({k!r})\nexcept Exception as e:\n    out.append(str(e))\n" for k in kinds
    ) + "print('\\n'.join(out))"
    root = ScriptedBackend([repl(code), repl("FINAL('still running')")])
    rlm = RLM(root, tools={"make": make}, sandbox={"max_message_mb": 1}, log_dir=tmp_path)
    result = rlm.run("q", context="c")
    assert result.answer == "still running" and result.finished
    seen = last_message(root, 1).splitlines()[1:]
    assert len(seen) == len(kinds) and all(line.startswith("make() failed: NotPlainDataError: ") for line in seen)
    by_kind = dict(zip(kinds, seen))
    assert "make() returned is a " in by_kind["object"] and "Row, which is not plain data" in by_kind["object"]
    assert "has the key 1 (int): dict keys must be str" in by_kind["int_keys"]
    assert "(return a sorted list)" in by_kind["set"] and "(decode it to str)" in by_kind["bytes"]
    assert "make() returned['a'][1][1] is a " in by_kind["nested"]
    assert "nests deeper than 64 levels (or contains itself)" in by_kind["cycle"]
    assert "more than 1,048,576 characters" in by_kind["big"]
    assert [e.error_type for e in tool_events(result)] == ["NotPlainDataError"] * len(kinds)


def test_plain_subclasses_arrive_as_their_base_types():
    class Color(enum.IntEnum):
        RED = 1

    point = collections.namedtuple("Point", "x y")
    value = {"c": Color.RED, "p": point(1, 2.5), "o": collections.OrderedDict(a=[True, None])}
    plain = to_plain(value, "f() returned")
    assert plain == {"c": 1, "p": (1, 2.5), "o": {"a": [True, None]}}
    assert type(plain["c"]) is int and type(plain["p"]) is tuple and type(plain["o"]) is dict


# -- arguments --------------------------------------------------------------------------------------
def test_arguments_that_are_not_plain_data_or_do_not_fit_the_signature_are_refused_before_the_tool_runs():
    calls = []

    def record(text: str, n: int = 1) -> int:
        calls.append((text, n))
        return n

    code = """
    class Thing:
        pass
    out = []
    for attempt in (lambda: record(len), lambda: record(Thing()), lambda: record('a', 1, 2),
                    lambda: record('a', m=3), lambda: record()):
        try:
            attempt()
        except Exception as e:
            out.append(type(e).__name__ + ': ' + str(e))
    print('\\n'.join(out))
    """
    root = ScriptedBackend([repl(code), repl("FINAL(str(record('ok', n=2)))")])
    result = RLM(root, tools={"record": record}).run("q", context="c")
    assert result.answer == "2" and calls == [("ok", 2)]  # no bad call reached the tool
    lines = last_message(root, 1).splitlines()[1:]
    assert lines[0].startswith("TypeError: a value of type builtin_function_or_method cannot be passed to the host")
    assert lines[1].startswith("TypeError: a value of type Thing cannot be passed to the host")
    assert lines[2] == ("HostFunctionError: record() failed: TypeError: "
                        "record(text: str, n: int = 1) -> int: too many positional arguments")
    assert "record() failed: TypeError: " in lines[3] and "unexpected keyword argument 'm'" in lines[3]
    assert "missing a required argument: 'text'" in lines[4]


def test_arguments_are_checked_host_side_too_for_environments_that_pass_objects():
    tool = Tool.of("search", search)
    with pytest.raises(NotPlainDataError, match=r"argument 1 of search\(\) is a .*object, which is not plain data"):
        asyncio.run(tool.invoke([object()], {}))
    with pytest.raises(NotPlainDataError, match=r"argument 'k' of search\(\)\['x'\] is a function"):
        asyncio.run(tool.invoke(["q"], {"k": {"x": search}}))
    assert asyncio.run(tool.invoke(["q"], {"k": 1})) == ["q-0"]


# -- child runs -------------------------------------------------------------------------------------
CHILD_PROBE = """
try:
    got = search('c', k=1)
except NameError:
    got = 'no tool'
FINAL(str(got))
"""


@pytest.mark.parametrize(
    ("child_tools", "answer", "prompt_has"),
    [
        (None, "['c-0']", "search(query: str, k: int = 2) -> list[str]"),
        ({}, "no tool", None),
        ({"search": lambda query, k=1: ["replaced"]}, "['replaced']", "search(query, k=1)"),
    ],
    ids=["inherit", "disabled", "replaced"],
)
def test_child_runs_inherit_drop_or_replace_the_tools(child_tools, answer, prompt_has):
    root = ScriptedBackend([repl("FINAL(rlm_query('look', context='piece'))")])
    child = ScriptedBackend([repl(CHILD_PROBE)], name="child")
    result = RLM(root, child, max_depth=2, tools={"search": search}, child_tools=child_tools).run("q", context="c")
    assert result.answer == answer
    child_system = child.calls[0]["messages"][0]["content"]
    root_system = root.calls[0]["messages"][0]["content"]
    if prompt_has is None:
        assert "Tools (" not in child_system and "search(" not in child_system
        assert "Children started with rlm_query do not have them." in root_system
    else:
        assert prompt_has in child_system
        assert "Children started with rlm_query have these tools: search." in root_system


def test_children_may_have_tools_the_root_has_not():
    root = ScriptedBackend([repl("FINAL(rlm_query('look', context='piece'))")])
    child = ScriptedBackend([repl(CHILD_PROBE)], name="child")
    result = RLM(root, child, max_depth=2, child_tools={"search": search}).run("q", context="c")
    assert result.answer == "['c-0']"
    root_system = root.calls[0]["messages"][0]["content"]
    assert "Tools (" not in root_system
    assert "Children started with rlm_query can also call these tools: search." in root_system


# -- the system prompt ------------------------------------------------------------------------------
def test_system_prompt_lists_each_tool_with_signature_and_first_docstring_paragraph():
    class Counter:
        """Counts words in a text."""

        def __call__(self, text: str) -> int:
            return len(text.split())

    def undocumented(a, *rest, flag=False):
        return a

    root = ScriptedBackend([repl("FINAL('x')")])
    RLM(root, tools={"search": search, "price": price, "count": Counter(), "undocumented": undocumented}).run(
        "q", context="c")
    system = root.calls[0]["messages"][0]["content"]
    assert ("- search(query: str, k: int = 2) -> list[str]: Titles of the k catalogue entries that best match "
            "``query``.\n") in system
    assert "- price(sku: str) -> float: Today's price of an item, in EUR.\n" in system
    assert "- count(text: str) -> int: Counts words in a text.\n" in system
    assert "- undocumented(a, *rest, flag=False)\n" in system
    assert "second paragraph" not in system
    assert "Children started" not in system  # max_depth=1: rlm_query starts no child REPL


def test_run_start_logs_the_tool_names(tmp_path):
    root = ScriptedBackend([repl("FINAL('x')")])
    result = RLM(root, tools={"search": search}, child_tools={}, log_dir=tmp_path).run("q", context="c")
    start = read_trajectory(result.trajectory)[0]
    assert start.config["tools"] == ["search"] and start.config["child_tools"] == []
    assert "tools" not in RLM(root).config()  # a configuration without tools reads as before


# -- bad input --------------------------------------------------------------------------------------
class NotAFunction:
    pass


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        ([search], r"tools must be a dict of name -> function such as \{f.__name__: f for f in functions\}"),
        ("search", r"tools must be a dict of name -> function, e\.g\. .* got a str"),
        ({"context": search}, r"'context' in tools would shadow the loaded context"),
        *[({name: search}, rf"'{name}' in tools would shadow a function the REPL already has")
          for name in REPL_FUNCTIONS],
        ({"history": search}, r"'history' in tools would shadow a variable the controller sets"),
        ({"len": search}, r"'len' in tools would shadow a Python builtin"),
        ({"print": search}, r"'print' in tools would shadow a Python builtin"),
        ({"1abc": search}, r"'1abc' in tools is not a Python identifier"),
        ({"my-tool": search}, r"'my-tool' in tools is not a Python identifier"),
        ({"class": search}, r"'class' in tools is not a Python identifier"),
        ({"": search}, r"'' in tools is not a Python identifier"),
        ({"_private": search}, r"'_private' in tools starts with '_'"),
        ({1: search}, r"tools names must be str"),
        ({"x": 3}, r"tools\['x'\] is a int, not a function"),
        ({"x": None}, r"tools\['x'\] is a NoneType, not a function"),
        ({"x": NotAFunction}, r"tools\['x'\] is the class NotAFunction"),
    ],
)
def test_bad_tools_fail_at_construction_with_a_specific_error(tools, message):
    root = ScriptedBackend(["unused"])
    with pytest.raises(ToolConfigError, match=message) as info:
        RLM(root, tools=tools)
    assert isinstance(info.value, ConfigError)
    with pytest.raises(ToolConfigError, match=message.replace("tools", "child_tools")):
        RLM(root, child_tools=tools)


def test_every_name_the_controller_registers_is_reserved():
    registered: list[str] = []

    class Recording(SandboxREPL):
        def register(self, name, fn):
            registered.append(name)
            super().register(name, fn)

    root = ScriptedBackend([repl("FINAL('x')")])
    RLM(root, tools={"search": search}, environment=Recording).run("q", context="c")
    assert "search" in registered
    assert set(registered) - {"search"} <= set(REPL_FUNCTIONS)
    with pytest.raises(ToolConfigError):
        build_tools({name: search for name in set(registered) - {"search"}})


# -- limits -----------------------------------------------------------------------------------------
def test_the_runs_time_limit_stops_a_tool_that_hangs(tmp_path):
    release = threading.Event()

    def hang() -> str:
        release.wait(timeout=30)
        return "late"

    root = ScriptedBackend([repl("hang()"), repl("FINAL('never')")])
    try:
        result = RLM(root, tools={"hang": hang}, budget={"timeout_s": 3.0}, log_dir=tmp_path).run("q", context="c")
    finally:
        release.set()
    assert result.reason == "timeout" and not result.finished
    assert len(root.calls) == 1  # the run ended after the cell, without another turn
    (event,) = tool_events(result)
    assert event.error_type == "BudgetExceededError" and "time limit of 3 s" in event.error


def test_tool_events_are_clipped_like_every_logged_text(tmp_path):
    def long(n: int) -> str:
        return "y" * n

    root = ScriptedBackend([repl("r = long(5000)\nFINAL(str(len(r)))")])
    result = RLM(root, tools={"long": long}, log_dir=tmp_path, log_text_limit=100).run("q", context="c")
    assert result.answer == "5000"
    (event,) = tool_events(result)
    assert event.result == "'" + "y" * 100 + "'... [4,900 more characters not logged]"
    assert event.arguments == "5000"


# -- show and view ----------------------------------------------------------------------------------
def test_show_and_view_render_tool_calls(tmp_path):
    def fail() -> None:
        raise RuntimeError("broken")

    root = ScriptedBackend([repl("search('a', k=1)\nfail()"), repl("FINAL('x')")])
    result = RLM(root, tools={"search": search, "fail": fail}, log_dir=tmp_path).run("q", context="c")
    buffer = io.StringIO()
    Console(file=buffer, width=200, color_system=None).print(render(read_trajectory(result.trajectory)))
    shown = buffer.getvalue()
    assert "tool search('a', k=1)" in shown and "→ ['a-0']" in shown
    assert "tool fail()" in shown and "RuntimeError: broken" in shown
    data = page_data(load_log(result.trajectory))
    cell = data["runs"][0]["kids"][0]["kids"][0]
    tools = [k for k in cell["kids"] if k["k"] == "tool"]
    assert [(t["name"], t["arguments"], t["result"], t["error_type"]) for t in tools] == [
        ("search", "'a', k=1", "['a-0']", None), ("fail", "", None, "RuntimeError")]
    assert len({t["id"] for t in tools}) == 2


# -- security ---------------------------------------------------------------------------------------
SECRET = "host-secret-4f1c"


def test_returned_data_cannot_carry_a_host_object_into_the_sandbox():
    class Evil(dict):
        secret = os

        def keys(self):  # a host method the REPL must never be able to call
            return os.environ.keys()

    class EvilStr(str):
        pass

    def leak(kind: str):
        if kind == "dict":
            value = Evil(a=1)
            value.payload = SECRET
            return value
        value = EvilStr("text")
        value.payload = SECRET
        return value

    code = """
    d = leak('dict'); s = leak('str')
    print(type(d).__name__, type(s).__name__, hasattr(d, 'secret'), hasattr(d, 'payload'), hasattr(s, 'payload'))
    print(sorted(d.keys()), s)
    """
    root = ScriptedBackend([repl(code), repl("FINAL('x')")])
    RLM(root, tools={"leak": leak}).run("q", context="c")
    seen = last_message(root, 1)
    assert "dict str False False False" in seen and "['a'] text" in seen
    assert SECRET not in seen and "PATH" not in seen


def test_repl_code_cannot_reach_the_tool_function_or_what_it_closes_over():
    def tool(q: str) -> str:
        return SECRET[:0] + q  # holds SECRET through its globals

    probes = [
        "print(type({f}).__name__)",
        "{f}.__globals__",
        "getattr({f}, '__globals__')",
        "getattr({f}, '__closure__')",
        "getattr({f}, '__code__')",
        "getattr({f}, '__dict__')",
        "getattr({f}, '__wrapped__')",
        "print(vars({f}))",
        "print(type({f})({f}))",
        "import copy\nprint(getattr(copy.copy({f}), '__globals__'))",
        "print({f}.__defaults__)",
    ]
    outputs: dict[str, list[str]] = {}
    for name in ("tool", "llm_query"):
        cells = [repl(p.format(f=name)) for p in probes] + [repl("FINAL('x')")]
        root = ScriptedBackend(cells)
        RLM(root, tools={"tool": tool}, max_consecutive_errors=len(cells) + 1).run("q", context="c")
        outputs[name] = [last_message(root, i + 1) for i in range(len(probes))]
    assert outputs["tool"][0] == "REPL output:\nfunction\n"  # the worker's stub, not the host function
    for tool_out, builtin_out in zip(outputs["tool"], outputs["llm_query"]):
        assert SECRET not in tool_out
        # a tool is exactly as reachable as the controller's own host functions
        assert tool_out == builtin_out.replace("llm_query", "tool")
    refused = outputs["tool"][1:]
    assert all(("not allowed" in o or "invalid attribute name" in o or "not available" in o
                or "cannot be called" in o) for o in refused), refused


def test_an_exception_whose_message_cannot_be_read_is_still_logged(tmp_path):
    class Odd(Exception):
        def __str__(self):
            raise RuntimeError("no message")

    def odd() -> None:
        raise Odd()

    root = ScriptedBackend([repl("odd()"), repl("FINAL('went on')")])
    result = RLM(root, tools={"odd": odd}, log_dir=tmp_path).run("q", context="c")
    assert result.answer == "went on"
    (event,) = tool_events(result)
    assert event.error == "Odd: (its message could not be read)" and event.error_type == "Odd"
    assert "odd() failed" in last_message(root, 1)


@pytest.mark.parametrize("exc", [SystemExit(2), SystemExit("usage: tool [-h]"), GeneratorExit()])
def test_a_tool_that_tries_to_exit_is_a_tool_error_and_the_run_goes_on(exc: BaseException) -> None:
    def cli(args: str) -> str:
        """A command-line tool (argparse exits on bad arguments)."""
        raise exc

    def async_cli(args: str) -> str:
        raise exc

    root = ScriptedBackend([
        "```repl\ntry:\n    cli('--bad')\nexcept Exception as e:\n    print('ERR', e)\n```",
        "```repl\nFINAL('still running')\n```",
    ])
    result = RLM(root, tools={"cli": cli, "other": async_cli}).run("q", context="x")
    assert result.finished and result.answer == "still running"
    seen = root.calls[1]["messages"][-1]["content"]
    assert "ERR" in seen and f"raised {type(exc).__name__}" in seen and "tried to exit" in seen
