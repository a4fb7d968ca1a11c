"""Callbacks, the event stream, the live view and history compaction, with scripted models."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loopagent import RLM, ConfigError
from loopagent.backends.scripted import ScriptedBackend
from loopagent.callbacks import EVENT_METHODS
from loopagent.cli import app
from loopagent.environments import ContextNotFoundError, SandboxREPL
from loopagent.errors import BackendError
from loopagent.prompts import COMPACTION_SYSTEM
from loopagent.stream import StreamError
from loopagent.trajectory import read_trajectory


def repl(code: str) -> str:
    return f"```repl\n{textwrap.dedent(code).strip()}\n```"


def dumped(events) -> list[dict]:
    return [json.loads(e.model_dump_json()) for e in events]


def nested_script(messages, loops):
    """A root that asks a child RLM, a child with a REPL of its own that answers from its context."""
    turns = sum(1 for m in messages if m["role"] == "assistant")
    if messages[-1]["content"].startswith("Count"):
        return repl("FINAL(str(len(context)))")
    if messages[1]["content"].startswith("Count"):
        return "child says 4"
    if turns == 0:
        return repl("print(rlm_query('Count', context='abcd'))\nprint(llm_batch(['Count a', 'Count b']))")
    return repl("FINAL('done')")


class RecordingREPL(SandboxREPL):
    """Keeps every REPL a run makes, to check their workers afterwards."""

    made: list[SandboxREPL] = []

    def __init__(self, limits) -> None:
        super().__init__(limits)
        RecordingREPL.made.append(self)


# -- callbacks --------------------------------------------------------------------------------------


def test_callbacks_receive_exactly_the_logged_events_in_order(tmp_path):
    seen = []
    rlm = RLM(ScriptedBackend(nested_script), max_depth=2, log_dir=tmp_path, callbacks=[seen.append])
    result = rlm.run("q", context="text")
    assert result.answer == "done"
    logged = read_trajectory(result.trajectory)
    assert dumped(seen) == dumped(logged)
    kinds = [e.type for e in seen]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end" and seen[-1].depth == 0
    assert {e.depth for e in seen} == {0, 1}  # the child run's events too
    child = [e for e in seen if e.depth == 1]
    assert {e.parent_id for e in child} == {seen[0].run_id}
    # every sub-call has its start before its end
    assert kinds.count("sub_call_start") == kinds.count("sub_call") == 3
    # without a log file, callbacks still get every event
    seen2 = []
    RLM(ScriptedBackend(nested_script), max_depth=2, callbacks=[seen2.append]).run("q", context="text")
    assert [e.type for e in seen2] == kinds


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def on_run_start(self, e):
        self.calls.append(("on_run_start", e.type))

    def on_iteration(self, e):
        self.calls.append(("on_iteration", e.type))

    def on_repl_cell(self, e):
        self.calls.append(("on_repl_cell", e.type))

    def on_sub_call(self, e):
        self.calls.append(("on_sub_call", e.type))

    def on_limit(self, e):
        self.calls.append(("on_limit", e.type))

    def on_run_end(self, e):
        self.calls.append(("on_run_end", e.type))

    def on_event(self, e):
        self.calls.append(("on_event", e.type))


def test_object_callbacks_get_the_mapped_methods(tmp_path):
    # two turns, no FINAL: the run hits max_iterations (a limit) and is asked for an answer
    def script(messages, loops):
        if messages[0]["role"] == "user":  # the child call
            return "child reply"
        turns = sum(1 for m in messages if m["role"] == "assistant")
        return [repl("print(llm_query('hi'))"), repl("x = 1"), "FINAL(forced)"][turns]

    root = ScriptedBackend(script)
    recorder = Recorder()
    result = RLM(root, max_iterations=2, log_dir=tmp_path, callbacks=[recorder]).run("q", context="c")
    assert result.reason == "max_iterations" and result.answer == "forced"
    logged = [e.type for e in read_trajectory(result.trajectory)]
    assert [t for _, t in recorder.calls] == logged  # every event, once, in order
    for method, kind in recorder.calls:
        expected = EVENT_METHODS[kind] if hasattr(Recorder, EVENT_METHODS[kind]) else "on_event"
        assert method == expected
    methods = {m for m, _ in recorder.calls}
    assert {"on_run_start", "on_iteration", "on_repl_cell", "on_sub_call", "on_limit", "on_run_end"} <= methods
    # sub_call_start and final have no method here: they went to on_event
    assert ("on_event", "sub_call_start") in recorder.calls and ("on_event", "final") in recorder.calls


def test_object_without_on_event_gets_only_its_methods():
    class Ends:
        def __init__(self) -> None:
            self.ends = []

        def on_run_end(self, e):
            self.ends.append(e.reason)

    ends = Ends()
    RLM(ScriptedBackend([repl("FINAL('x')")]), callbacks=[ends]).run("q", context="c")
    assert ends.ends == ["final"]


def test_async_callback_gets_every_event_before_the_run_returns(tmp_path):
    got = []

    async def slow(event):
        await asyncio.sleep(0.001)  # later events queue up meanwhile; order must hold
        got.append(event)

    rlm = RLM(ScriptedBackend(nested_script), max_depth=2, log_dir=tmp_path, callbacks=[slow])

    async def main():
        return await rlm.arun("q", context="text")

    result = asyncio.run(main())
    assert dumped(got) == dumped(read_trajectory(result.trajectory))


def test_a_raising_callback_does_not_crash_the_run(tmp_path, caplog):
    good = []
    calls = {"n": 0}

    def bad(event):
        calls["n"] += 1
        raise RuntimeError("boom")

    class BadMethod:
        def on_iteration(self, event):
            raise KeyError("nope")

    with caplog.at_level(logging.WARNING, logger="loopagent"):
        rlm = RLM(ScriptedBackend(nested_script), max_depth=2, log_dir=tmp_path,
                  callbacks=[bad, BadMethod(), good.append])
        result = rlm.run("q", context="text")
    assert result.answer == "done" and result.reason == "final"
    logged = read_trajectory(result.trajectory)
    warnings = [e for e in logged if e.type == "warning"]
    assert len(warnings) == 2  # once per failing callback, however often it failed
    assert "bad" in warnings[0].source and "RuntimeError: boom" in warnings[0].message
    assert "BadMethod" in warnings[1].source and "KeyError" in warnings[1].message
    assert calls["n"] == len(logged)  # it kept being called (warnings included), the run went on
    assert dumped(good) == dumped(logged)  # the others got everything, the warnings too
    assert sum("RuntimeError: boom" in r.getMessage() for r in caplog.records) == 1


def test_bad_callbacks_are_config_errors():
    root = ScriptedBackend(["x"])
    with pytest.raises(ConfigError, match="callbacks must be a list"):
        RLM(root, callbacks=print)
    with pytest.raises(ConfigError, match=r"callbacks\[1\] \(int\) is neither callable"):
        RLM(root, callbacks=[print, 42])


# -- the stream ---------------------------------------------------------------------------------------


def test_stream_yields_the_logged_events_with_nested_runs_then_the_result(tmp_path):
    rlm = RLM(ScriptedBackend(nested_script), max_depth=2, log_dir=tmp_path)

    async def main():
        stream = rlm.stream("q", context="text")
        assert stream.result is None
        return stream, [e async for e in stream]

    stream, events = asyncio.run(main())
    assert stream.result is not None and stream.result.answer == "done" and stream.closed
    assert dumped(events) == dumped(read_trajectory(stream.result.trajectory))
    assert events[-1].type == "run_end" and events[-1].depth == 0 and events[-1].run_id == stream.result.run_id
    child_start = next(e for e in events if e.type == "run_start" and e.depth == 1)
    assert child_start.parent_id == stream.result.run_id
    # the child's events come between the call that started it and its end
    kinds = [(e.type, e.depth) for e in events]
    assert kinds.index(("sub_call_start", 0)) < kinds.index(("run_start", 1)) < kinds.index(("run_end", 1))


def test_stream_is_iterated_once_and_reports_run_errors(tmp_path):
    rlm = RLM(ScriptedBackend([repl("FINAL('x')")]), log_dir=tmp_path)

    async def main():
        stream = rlm.stream("q", context="c")
        _ = [e async for e in stream]
        with pytest.raises(StreamError, match="iterated once"):
            stream.__aiter__()
        with pytest.raises(ContextNotFoundError):
            _ = [e async for e in rlm.stream("q", context=Path(tmp_path / "missing.txt"))]

    asyncio.run(main())
    with pytest.raises(ConfigError, match="non-empty"):
        rlm.stream("  ", context="c")


def _stuck_child(messages, loops):
    if messages[1]["content"].startswith("Count"):
        return repl("while True:\n    pass")  # the child's cell never ends by itself
    return repl("print(rlm_query('Count', context='abcd'))")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _open_fds_to(path_dir: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(path_dir)):
            found.append(target)
    return found


@pytest.mark.parametrize("how", ["break", "async_with"])
def test_leaving_the_stream_early_cancels_the_run_cleanly(tmp_path, how):
    RecordingREPL.made = []
    rlm = RLM(ScriptedBackend(_stuck_child), max_depth=2, environment=RecordingREPL, log_dir=tmp_path,
              sandbox={"timeout_s": 120})

    async def main():
        pids: list[int] = []
        stream = rlm.stream("q", context="text")

        async def consume(events):
            async for event in events:
                if event.type == "repl_exec":
                    raise AssertionError("no cell should have ended")
                if event.type == "root_turn" and event.depth == 1:
                    # the child's endless cell is about to run: both workers exist
                    pids.extend(r.pid for r in RecordingREPL.made if r.pid is not None)
                    break

        if how == "async_with":
            async with stream as events:
                await consume(events)
        else:
            await consume(stream)
            for _ in range(600):  # the loop finalizes the abandoned iteration on its own
                if stream.closed:
                    break
                await asyncio.sleep(0.05)
        return stream, pids

    stream, pids = asyncio.run(main())
    assert stream.closed and stream.result is None
    assert len(pids) == 2
    assert not any(_alive(p) for p in pids)
    assert all(r.pid is None for r in RecordingREPL.made)
    assert _open_fds_to(tmp_path) == []  # the trajectory file is closed
    (log,) = tmp_path.glob("*.jsonl")
    events = read_trajectory(log)
    ends = [(e.type, e.depth, getattr(e, "reason", None)) for e in events[-4:]]
    assert ends == [("limit", 1, "cancelled"), ("run_end", 1, "cancelled"),
                    ("limit", 0, "cancelled"), ("run_end", 0, "cancelled")]


# -- the CLI live view --------------------------------------------------------------------------------


def _replies_file(tmp_path: Path) -> Path:
    path = tmp_path / "replies.json"
    path.write_text(json.dumps([repl("print(llm_query('hi'))"), "child reply", "FINAL(done)"]))
    return path


@pytest.mark.parametrize("flag", ["--live", "--no-live", None])
def test_cli_live_view(tmp_path, flag):
    args = ["run", "q", "--root", f"scripted:{_replies_file(tmp_path)}", "--log-dir", str(tmp_path / "runs")]
    result = CliRunner().invoke(app, args + ([flag] if flag else []))
    assert result.exit_code == 0, result.output
    assert "answer (final): done" in result.output
    shown = "in flight" in result.output
    # on: the last frame of the view; off, and by default when stdout is no terminal: none
    assert shown == (flag == "--live")
    if shown:
        assert "turns 2" in result.output and "sub-calls 1 done, 0 in flight" in result.output
        assert "loop-tokens" in result.output and "cost" in result.output


def test_live_progress_counts_calls_in_flight_and_usage():
    from rich.console import Console

    from loopagent.live import LiveProgress
    from loopagent.trajectory import RootTurn, SubCall, SubCallStart

    progress = LiveProgress(Console(file=open(os.devnull, "w")))  # noqa: SIM115
    with progress:
        progress.on_event(RootTurn(run_id="r", iteration=0, prompt="p", completion="c", model="m",
                                   usage={"prompt_tokens": 10, "completion_tokens": 2, "loop_tokens": 48,
                                          "usd": 0.5}))
        for i in range(3):
            progress.on_event(SubCallStart(run_id="r", kind="llm_batch", index=i, model="m"))
        assert progress.in_flight == 3
        progress.on_event(SubCall(run_id="r", kind="llm_batch", index=0, model="m", prompt="p", response="x",
                                  usage={"prompt_tokens": 1, "completion_tokens": 1, "loop_tokens": 8}))
    assert progress.in_flight == 2 and progress.calls_done == 1 and progress.turns == 1
    assert progress.tokens == 14 and progress.loop_tokens == 56 and progress.usd == 0.5


# -- compaction -----------------------------------------------------------------------------------------


class LongRun:
    """A root that works for ``turns`` turns, printing a lot each time, then reports `history`.

    Summary requests (the compaction prompt) get numbered notes. Every call's messages are kept.
    """

    def __init__(self, turns: int, *, fail_summary: bool = False) -> None:
        self.turns = turns
        self.fail_summary = fail_summary
        self.replies: list[str] = []
        self.seen: list[list[dict]] = []
        self.summaries = 0

    def __call__(self, messages, loops):
        if messages[0]["content"] == COMPACTION_SYSTEM:
            if self.fail_summary:
                raise BackendError("the summarizer is down")
            self.summaries += 1
            return f"NOTES-{self.summaries}: v0..v{len(self.replies) - 1} hold 300 x's each; keep going."
        self.seen.append([dict(m) for m in messages])
        n = len(self.replies)
        if n == self.turns:
            reply = repl("import json\ntry:\n    h = history\nexcept NameError:\n    h = None\nFINAL(json.dumps(h))")
        else:
            reply = repl(f"v{n} = ' '.join('w{n}-' + str(i) for i in range(40))\nprint(v{n})")
        self.replies.append(reply)
        return reply


def test_long_run_compacts_twice_continues_and_finishes(tmp_path):
    script = LongRun(turns=15)  # the final turn comes one after a compaction: `history` is kept current
    root = ScriptedBackend(script)
    root.context_window = 1400  # a small model: the run reaches 80% of it every few turns
    rlm = RLM(root, log_dir=tmp_path, max_iterations=30, compact_at=0.8, compact_keep_turns=2)
    result = rlm.run("q", context="c")
    assert result.reason == "final" and result.finished

    events = read_trajectory(result.trajectory)
    compactions = [e for e in events if e.type == "compaction"]
    assert len(compactions) >= 2 and all(c.error is None for c in compactions)
    for c in compactions:
        assert c.tokens_before >= 0.8 * 1400 > c.tokens_after
        assert c.turns_folded >= 1 and c.window == 1400 and c.history_variable == "history"
        assert c.summary.startswith("NOTES-") and c.usage["prompt_tokens"] > 0
    assert [c.turns_folded_total for c in compactions] == list(
        __import__("itertools").accumulate(c.turns_folded for c in compactions))

    # after each compaction the model sees [system, question, its notes, the last 2 turns]
    first = compactions[0].iteration
    after = script.seen[first]
    assert len(after) == 3 + 2 * 2
    assert after[:2] == script.seen[0][:2]
    assert "NOTES-1" in after[2]["content"] and "`history`" in after[2]["content"]
    assert after[3]["content"] == script.replies[first - 2]  # the kept turns, word for word
    last = script.seen[-1]
    assert f"NOTES-{len(compactions)}" in last[2]["content"] and "NOTES-1:" not in last[2]["content"]
    assert len(last) < 3 + 2 * 2 + 2 * 4  # it never grew back to the full history

    # the REPL's `history` held every message before the final turn, none folded
    history = json.loads(result.answer)
    assert history[:2] == script.seen[0][:2]
    assert [m["content"] for m in history if m["role"] == "assistant"] == script.replies[:-1]
    assert len(history) == 2 + 2 * (len(script.replies) - 1)
    assert all("NOTES-" not in m["content"] for m in history)

    # the summary calls are root calls in the usage, as their events say
    assert result.usage.by_depth[0].calls == len(root.calls) == len(script.seen) + script.summaries
    assert script.summaries == len(compactions)
    # the system prompt warned the model off the name
    assert "`history`" in script.seen[0][0]["content"]
    # and the summary request showed the folded turns
    request = next(c["messages"] for c in root.calls if c["messages"][0]["content"] == COMPACTION_SYSTEM)
    assert script.replies[0] in request[1]["content"] and "The task: q" in request[1]["content"]


def test_compaction_needs_a_known_window_and_can_be_off(tmp_path):
    # no context_window on the backend: never compacted, and the prompt says nothing about it
    script = LongRun(turns=14)
    result = RLM(ScriptedBackend(script), log_dir=tmp_path, max_iterations=30).run("q", context="c")
    assert result.reason == "final" and script.summaries == 0
    assert not any(e.type == "compaction" for e in read_trajectory(result.trajectory))
    assert "`history`" not in script.seen[0][0]["content"]
    assert len(script.seen[-1]) == 2 + 2 * 14
    # compact_at=None turns it off even where the window is known
    script = LongRun(turns=14)
    root = ScriptedBackend(script)
    root.context_window = 1200
    RLM(root, compact_at=None, max_iterations=30).run("q", context="c")
    assert script.summaries == 0
    # the override gives the root's window to a backend that does not know it
    script = LongRun(turns=14)
    seen = []
    RLM(ScriptedBackend(script), root_context_window=1200, compact_keep_turns=0, max_iterations=30,
        callbacks=[seen.append]).run("q", context="c")
    compactions = [e for e in seen if e.type == "compaction"]
    assert script.summaries == len(compactions) >= 2
    for c in compactions:  # head and notes, no kept turn
        assert len(script.seen[c.iteration]) == 3 and "NOTES-" in script.seen[c.iteration][2]["content"]


def test_a_failed_summary_leaves_the_messages_and_the_run_goes_on(tmp_path):
    script = LongRun(turns=10, fail_summary=True)
    root = ScriptedBackend(script)
    root.context_window = 1200
    result = RLM(root, log_dir=tmp_path, max_iterations=30).run("q", context="c")
    assert result.reason == "final"
    failed = [e for e in read_trajectory(result.trajectory) if e.type == "compaction"]
    assert failed and all("the summarizer is down" in e.error and e.turns_folded == 0 for e in failed)
    assert len(script.seen[-1]) == 2 + 2 * 10  # nothing folded
    assert result.answer == "null"  # `history` was never set


@pytest.mark.parametrize("kwargs, match", [
    ({"compact_at": 0}, "compact_at must be a fraction"),
    ({"compact_at": 1.5}, "compact_at must be a fraction"),
    ({"compact_at": True}, "compact_at must be a fraction"),
    ({"compact_at": "0.8"}, "compact_at must be a fraction"),
    ({"compact_keep_turns": -1}, "compact_keep_turns"),
    ({"root_context_window": 0}, "root_context_window"),
])
def test_bad_compaction_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        RLM(ScriptedBackend(["x"]), **kwargs)


def test_sandbox_set_variable():
    with SandboxREPL(timeout_s=10) as env:
        env.register("llm_query", lambda p: p)
        env.set_variable("notes", [{"role": "user", "content": "héllo"}, 3, None])
        assert env.execute("print(notes[0]['content'], len(notes))").stdout == "héllo 3\n"
        for name in ("context", "llm_query", "_x", "not an identifier", "class"):
            with pytest.raises(ValueError):
                env.set_variable(name, 1)
        with pytest.raises(TypeError, match="not JSON-like"):
            env.set_variable("bad", {1, 2})
        assert env.get_variable("notes")[1] == 3


def test_sandbox_close_from_another_thread_ends_a_running_cell():
    import concurrent.futures
    import threading

    started = threading.Event()
    env = SandboxREPL(timeout_s=120)
    env.register("started", lambda: started.set())
    env.start()
    pid = env.pid
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(env.execute, "started()\nwhile True:\n    pass")
        assert started.wait(60)
        env.close()  # does not wait for the cell's 120 s timeout
        result = running.result(timeout=60)
    assert result.error_type == "SandboxCrash" and "closed" in result.error
    assert env.pid is None and not _alive(pid)


def test_a_callback_failing_on_the_last_event_keeps_run_end_last(tmp_path, caplog):
    class FailsAtTheEnd:
        def on_run_end(self, event):
            raise RuntimeError("too late")

    with caplog.at_level(logging.WARNING, logger="loopagent"):
        result = RLM(ScriptedBackend(nested_script), max_depth=2, log_dir=tmp_path,
                     callbacks=[FailsAtTheEnd()]).run("q", context="text")
    logged = read_trajectory(result.trajectory)
    # the child's run_end failure is logged as a warning; the root's goes to the logger only
    assert logged[-1].type == "run_end" and logged[-1].parent_id is None
    assert [e.type for e in logged].count("warning") == 1
    assert any("too late" in r.getMessage() for r in caplog.records)
