"""The RLM controller end to end with scripted models."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from loopagent import RLM, Budget, ConfigError, InvalidLoopsError, LoopagentError, ModelSpecError, model
from loopagent.backends.scripted import ScriptedBackend
from loopagent.environments import (
    ContextNotFoundError,
    ContextTooLargeError,
    SandboxLimits,
    SandboxREPL,
    UnsupportedContextError,
    describe_context,
)
from loopagent.policies import LoopRequest, get_policy
from loopagent.trajectory import SCHEMA_VERSION, read_trajectory


def repl(code: str) -> str:
    return f"```repl\n{textwrap.dedent(code).strip()}\n```"


def looped_child(**kw):
    return ScriptedBackend(lambda messages, loops: f"child@{loops}", name="child", looped=True,
                           default_loops=kw.pop("default_loops", 4), max_loops=kw.pop("max_loops", 8), **kw)


def events_of(result, kind=None):
    events = read_trajectory(result.trajectory)
    return [e for e in events if kind is None or e.type == kind]


# -- a whole run ------------------------------------------------------------------------------------


def test_run_answers_with_final_and_logs_everything(tmp_path):
    root = ScriptedBackend([
        "First look at it.\n"
        + repl("print(len(context))\nchunks = [context[i:i + 20] for i in range(0, len(context), 20)]"),
        repl("notes = llm_batch(['summarize: ' + c for c in chunks])\nprint(notes)"),
        repl("FINAL(llm_query('combine: ' + ' '.join(notes), loops=2))"),
    ])
    rlm = RLM(root, looped_child(), log_dir=tmp_path)
    result = rlm.run("What is this?", context="x" * 60)
    assert result.answer == "child@2" and result.finished and result.reason == "final"
    assert result.iterations == 3
    u = result.usage
    assert u.by_depth[0].calls == 3 and u.by_depth[1].calls == 4
    assert u.total.calls == 7 and u.by_model["child"].calls == 4
    # loop-tokens: only the looped child's calls, tokens x loops
    assert u.by_depth[0].loop_tokens == 0
    assert u.total.loop_tokens == u.by_depth[1].loop_tokens > 0
    events = events_of(result)
    assert all(e.v == SCHEMA_VERSION for e in events)
    kinds = [e.type for e in events]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end"
    assert kinds.count("root_turn") == 3 and kinds.count("repl_exec") == 3 and kinds.count("sub_call") == 4
    calls = [e for e in events if e.type == "sub_call"]
    assert [c.loops_chosen for c in calls] == [4, 4, 4, 2]
    assert [c.loops_requested for c in calls] == [None, None, None, 2]
    assert calls[-1].loops_executed == 2.0
    assert events[0].config["child"]["max_loops"] == 8
    assert events[0].context == {"type": "str", "chars": 60}  # type and size, not the content
    assert "REPL output" in root.calls[1]["messages"][-1]["content"]
    assert "60" in root.calls[1]["messages"][-1]["content"]


def test_final_var_and_final_as_text(tmp_path):
    root = ScriptedBackend([repl("answer = context.upper()"), "Done.\nFINAL_VAR(answer)"])
    assert RLM(root).run("q", context="abc").answer == "ABC"
    root = ScriptedBackend([repl("answer = {'n': 2}\nFINAL_VAR('answer')")])
    assert RLM(root).run("q", context="abc").answer == "{'n': 2}"
    root = ScriptedBackend(["I know it.\nFINAL(\"forty two\")"])
    result = RLM(root).run("q", context="abc")
    assert result.answer == "forty two" and result.finished


def test_reply_without_code_is_answered_not_fatal():
    root = ScriptedBackend(["I think the answer is blue.", repl("FINAL('blue')")])
    result = RLM(root).run("q", context="c")
    assert result.answer == "blue" and result.iterations == 2
    assert "no ```repl code block" in root.calls[1]["messages"][-1]["content"]


def test_out_of_turns_asks_once_for_a_final_answer():
    root = ScriptedBackend([repl("x = 1"), repl("x = 2"), "FINAL(my best guess)"])
    result = RLM(root, max_iterations=2).run("q", context="c")
    assert result.reason == "max_iterations" and not result.finished
    assert result.answer == "my best guess"
    assert "out of turns" in root.calls[-1]["messages"][-1]["content"]


def test_consecutive_errors_end_the_run_with_a_partial_answer():
    root = ScriptedBackend(["Trying.\n" + repl("1 / 0")] * 3)
    result = RLM(root, max_consecutive_errors=3).run("q", context="c")
    assert result.reason == "consecutive_errors" and not result.finished
    assert result.answer == "Trying."
    assert "ZeroDivisionError" in root.calls[1]["messages"][-1]["content"]


# -- limits -----------------------------------------------------------------------------------------


def test_loop_token_budget_ends_the_run_cleanly(tmp_path):
    root = ScriptedBackend(["Working.\n" + repl("r = llm_batch(['piece'] * 8)\nprint(r[:1])")] * 10)
    rlm = RLM(root, looped_child(default_loops=8), budget=Budget(max_loop_tokens=200), log_dir=tmp_path)
    result = rlm.run("q", context="c")
    assert result.reason == "max_loop_tokens" and not result.finished
    assert "loop-tokens" in result.detail
    assert result.iterations < 10
    assert result.answer == "Working."
    assert any(e.type == "limit" and e.reason == "max_loop_tokens" for e in events_of(result))


def test_timeout_budget():
    root = ScriptedBackend([repl("x = llm_query('slow')")] * 10)
    slow = ScriptedBackend(lambda m, loops: "late", latency_s=0.6, name="slow")
    result = RLM(root, slow, budget={"timeout_s": 1.0}).run("q", context="c")
    assert result.reason == "timeout"
    assert result.wall_s < 5


def test_explicit_bad_loops_in_code_reach_the_model():
    root = ScriptedBackend([repl("llm_query('hi', loops=0)"), repl("llm_query('hi', loops=99)"), repl("FINAL('ok')")])
    result = RLM(root, looped_child()).run("q", context="c")
    assert result.answer == "ok"
    assert "positive integer" in root.calls[1]["messages"][-1]["content"]
    assert "exceeds the maximum of 8" in root.calls[2]["messages"][-1]["content"]


# -- recursion and concurrency ----------------------------------------------------------------------------


def test_rlm_query_starts_a_child_run_with_its_own_repl(tmp_path):
    def script(messages, loops):
        first = messages[1]["content"]
        turns = sum(1 for m in messages if m["role"] == "assistant")
        if first.startswith("Count"):  # the child run
            return repl("FINAL(str(len(context)))") if turns == 0 else "unused"
        if turns == 0:
            return repl("sub = rlm_query('Count the letters', context='abcd')\nprint(sub)")
        return repl("FINAL('child said ' + sub)")

    backend = ScriptedBackend(script, name="m")
    result = RLM(backend, max_depth=2, log_dir=tmp_path).run("top question", context="whatever")
    assert result.answer == "child said 4"
    events = events_of(result)
    starts = [e for e in events if e.type == "run_start"]
    assert len(starts) == 2
    child_start = starts[1]
    assert child_start.parent_id == starts[0].run_id and child_start.depth == 1
    call = next(e for e in events if e.type == "sub_call" and e.kind == "rlm_query")
    assert call.child_run_id == child_start.run_id
    assert result.usage.total.calls == 3 and result.usage.by_depth[1].calls == 1


def test_rlm_query_at_max_depth_is_a_plain_call_with_context_inlined():
    seen = []
    child = ScriptedBackend(lambda m, loops: seen.append(m[-1]["content"]) or "plain", name="child")
    root = ScriptedBackend([repl("FINAL(rlm_query('Count', context='abcd'))")])
    result = RLM(root, child, max_depth=1).run("q", context="c")
    assert result.answer == "plain"
    assert seen == ["Count\n\nContext:\nabcd"]


def test_llm_batch_runs_concurrently():
    root = ScriptedBackend([repl("r = llm_batch(['p'] * 16)"), repl("FINAL(str(len(r)))")])
    child = ScriptedBackend(lambda m, loops: "x", latency_s=0.2, name="child")
    start = time.monotonic()
    result = RLM(root, child).run("q", context="c")
    elapsed = time.monotonic() - start
    assert result.answer == "16"
    assert elapsed < 16 * 0.2 / 4  # concurrent, not 3.2 s of serial calls


def test_concurrency_bound_is_respected():
    in_flight, peak = 0, 0

    async def reply(messages, loops):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return "x"

    root = ScriptedBackend([repl("r = llm_batch(['p'] * 12)\nFINAL('ok')")])
    RLM(root, ScriptedBackend(reply, name="c"), concurrency=3).run("q", context="c")
    assert peak == 3


# -- policies -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy, options, request_kw, expected",
    [
        ("fixed", {}, dict(depth=1, default=4), 4),
        ("fixed", {}, dict(depth=1, default=4, explicit=6), 6),
        ("fixed", {}, dict(depth=1, default=4, explicit=16, max_loops=8), 8),
        ("by-depth", {}, dict(depth=1, default=8), 8),
        ("by-depth", {}, dict(depth=3, default=8), 2),
        ("by-depth", {"schedule": {2: 5}}, dict(depth=2, default=8), 5),
        ("budgeted", {"fraction": 0.5}, dict(depth=1, default=8, est_tokens=100, remaining_loop_tokens=400), 2),
        ("budgeted", {}, dict(depth=1, default=8, est_tokens=100, remaining_loop_tokens=None), 8),
        ("budgeted", {"fraction": 1.0},
         dict(depth=1, default=8, est_tokens=100, n_calls=4, remaining_loop_tokens=1600), 4),
        ("adaptive", {}, dict(depth=1, default=2, max_loops=16), 16),
    ],
)
def test_policies_choose_loops(policy, options, request_kw, expected):
    choice = get_policy(policy, **options).choose(LoopRequest(kind="llm_query", looped=True, **request_kw))
    assert choice.loops == expected


def test_policies_give_non_looped_models_none_and_adaptive_sets_a_threshold():
    assert get_policy("by-depth").choose(LoopRequest(depth=1, kind="llm_query", looped=False, explicit=4)).loops is None
    assert (get_policy("adaptive", threshold=0.7).choose(LoopRequest(depth=1, kind="llm_query", looped=True))
            .exit_threshold == 0.7)


def test_adaptive_policy_needs_a_gated_model_before_the_run():
    root = ScriptedBackend([repl("FINAL('x')")])
    ungated = ScriptedBackend(lambda m, n: "x", name="child-no-gate", looped=True, default_loops=2, max_loops=8)
    with pytest.raises(ConfigError, match="child model child-no-gate has none"):
        RLM(root, ungated, loop_policy="adaptive")
    assert root.calls == [] and ungated.calls == []  # refused before any model call
    # a non-looped (API) model needs no gate: only the looped child is checked
    RLM(root, ScriptedBackend(lambda m, n: "x", looped=True, max_loops=8, exit_gate=True), loop_policy="adaptive")


def test_adaptive_policy_takes_a_served_model_declared_gated():
    from loopagent.backends.litellm import LiteLLMBackend

    root = ScriptedBackend([repl("FINAL('x')")])
    with pytest.raises(ConfigError, match="child model served:http://127.0.0.1:9/v1 has none"):
        RLM(root, LiteLLMBackend.served("http://127.0.0.1:9/v1", loops=4), loop_policy="adaptive")
    gated = LiteLLMBackend.served("http://127.0.0.1:9/v1", loops=4, exit_gate=True)
    assert gated.has_exit_gate and RLM(root, gated, loop_policy="adaptive").child is gated
    assert not LiteLLMBackend.served("http://127.0.0.1:9/v1", exit_gate=True).has_exit_gate  # not looped


@pytest.mark.parametrize("options, message", [
    ({"threshold": 1.5}, "threshold must be a number in"), ({"threshold": "high"}, "threshold must be a number in"),
    ({"min_loops": 0}, "min_loops must be a positive integer"),
])
def test_adaptive_policy_options_are_checked(options, message):
    with pytest.raises(ConfigError, match=message):
        get_policy("adaptive", **options)


def test_adaptive_run_sends_the_gate_options_to_every_looped_call():
    child = ScriptedBackend(lambda m, n: "leaf", looped=True, default_loops=2, max_loops=8, exit_gate=True)
    root = ScriptedBackend([repl("FINAL(llm_query('q'))")])
    result = RLM(root, child, loop_policy="adaptive", policy_options={"threshold": 0.6, "min_loops": 3}).run("ctx", "q")
    assert result.answer == "leaf"
    assert child.calls[0]["loops"] == 8 and child.calls[0]["exit_threshold"] == 0.6 and child.calls[0]["min_loops"] == 3
    assert "exit_threshold" not in root.calls[0]  # the root is not looped


@pytest.mark.parametrize("kwargs, message", [
    ({"exit_threshold": 1.5}, "exit_threshold must be a number in"),
    ({"exit_threshold": 0.5, "min_loops": 9}, "min_loops=9 exceeds the call's loops=8"),
    ({"min_loops": 0}, "min_loops must be a positive integer"),
])
def test_bad_gate_options_are_refused_by_the_backend(kwargs, message):
    child = ScriptedBackend(lambda m, n: "x", looped=True, max_loops=8, exit_gate=True)
    with pytest.raises(InvalidLoopsError, match=message):
        child.complete([{"role": "user", "content": "q"}], loops=8, **kwargs)
    with pytest.raises(InvalidLoopsError, match="has no exit gate"):
        ScriptedBackend(lambda m, n: "x", looped=True, max_loops=8).complete([{"role": "user", "content": "q"}],
                                                                             loops=8, exit_threshold=0.5)
    assert child.calls == []


def test_by_depth_policy_in_a_nested_run(tmp_path):
    def script(messages, loops):
        turns = sum(1 for m in messages if m["role"] == "assistant")
        if len(messages) == 1:  # the plain llm_query
            return "deep answer"
        if messages[1]["content"] == "inner":
            return repl("FINAL(llm_query('deep'))")
        return repl("FINAL(rlm_query('inner'))") if turns == 0 else "x"

    backend = ScriptedBackend(script, name="m", looped=True, default_loops=8, max_loops=8)
    result = RLM(backend, max_depth=2, loop_policy="by-depth", log_dir=tmp_path).run("q", context="c")
    turns = {(e.depth, e.loops_chosen) for e in events_of(result, "root_turn")}
    assert turns == {(0, 8), (1, 8)}
    deep = [e for e in events_of(result, "sub_call") if e.kind == "llm_query"]
    assert deep[0].depth == 1 and deep[0].loops_chosen == 4  # a call made from depth 1 sits at depth 2


# -- bad input ---------------------------------------------------------------------------------------------


def test_bad_configuration_fails_before_any_work():
    with pytest.raises(ModelSpecError, match="unknown model spec"):
        model("nonsense:thing")
    with pytest.raises(ModelSpecError, match="not a checkpoint directory"):
        model("vllm:/some/ckpt")
    with pytest.raises(ModelSpecError, match="embedded role"):
        model("embedded:teacher")
    with pytest.raises(InvalidLoopsError):
        model("scripted", replies=["x"], loops=0)
    with pytest.raises(ConfigError):
        RLM(ScriptedBackend(["x"]), max_depth=0)
    with pytest.raises(ConfigError):
        RLM(ScriptedBackend(["x"]), budget={"max_usd": -1})
    with pytest.raises(ConfigError, match="unknown loop policy"):
        RLM(ScriptedBackend(["x"]), loop_policy="greedy")


def test_bad_context_fails_before_any_model_call(tmp_path):
    root = ScriptedBackend([repl("FINAL(1)")])
    with pytest.raises(UnsupportedContextError):
        RLM(root).run("q", context=object())
    with pytest.raises(ContextTooLargeError):
        RLM(root, sandbox={"max_context_mb": 0.001}).run("q", context="x" * 5000)
    with pytest.raises(ConfigError):
        RLM(root).run("", context="c")
    assert root.calls == []


# -- environments and context descriptions ------------------------------------------------------------


class CountingREPL(SandboxREPL):
    """The default sandbox, counting how often it is made and which limits it got."""

    made: list[SandboxLimits] = []

    def __init__(self, limits: SandboxLimits) -> None:
        CountingREPL.made.append(limits)
        super().__init__(limits)


def test_environment_factory_makes_every_repl_of_a_run(tmp_path):
    def script(messages, loops):
        turns = sum(1 for m in messages if m["role"] == "assistant")
        if messages[1]["content"].startswith("Count"):
            return repl("FINAL(str(len(context)))")
        return repl("print(rlm_query('Count', context='abcd'))") if turns == 0 else repl("FINAL('done')")

    CountingREPL.made = []
    rlm = RLM(ScriptedBackend(script), max_depth=2, environment=CountingREPL, sandbox={"timeout_s": 7})
    assert rlm.run("q", context="text").answer == "done"
    assert len(CountingREPL.made) == 2 and all(limits.timeout_s == 7 for limits in CountingREPL.made)
    with rlm.session("banana") as s:
        s.ask("q")
    assert len(CountingREPL.made) == 4  # the session's REPL and its child run's


def test_bad_environment_is_a_config_error():
    with pytest.raises(ConfigError, match="environment must be a class or factory"):
        RLM(ScriptedBackend(["x"]), environment="sandbox")
    root = ScriptedBackend([repl("FINAL(1)")])
    with pytest.raises(ConfigError, match="lacks the Environment methods"):
        RLM(root, environment=lambda limits: object()).run("q", context="c")
    assert root.calls == []


def test_context_description_is_what_the_prompt_says_and_the_log_holds(tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.md").write_text("hello")
    (docs / "sub" / "b.md").write_text("abc")
    (docs / "link.md").symlink_to(docs / "a.md")  # the sandbox does not follow links: not counted
    root = ScriptedBackend([repl("FINAL(str(len(context.files)))")])
    result = RLM(root, log_dir=tmp_path / "runs").run("q", context=docs)
    assert result.answer == "2"
    start = events_of(result, "run_start")[0]
    assert start.context == {"type": "directory", "path": str(docs), "files": 2, "bytes": 8}
    assert "a directory of 2 files (8 bytes)" in start.system_prompt == root.calls[0]["messages"][0]["content"]
    with SandboxREPL() as env:
        assert env.load_context(["first item", "x"]) == describe_context(["first item", "x"])
        assert describe_context(["first item", "x"]).summary() == {"type": "list", "items": 2, "chars": 11}


def test_missing_context_path_is_a_sandbox_error_and_a_file_not_found_error(tmp_path):
    root = ScriptedBackend([repl("FINAL(1)")])
    with pytest.raises(ContextNotFoundError, match="does not exist") as info:
        RLM(root).run("q", context=tmp_path / "missing.txt")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, LoopagentError)
    assert root.calls == []


# -- sessions, async, logs ----------------------------------------------------------------------------------


def test_session_keeps_context_and_variables():
    root = ScriptedBackend([repl("found = context.count('a')\nFINAL(str(found))"), repl("FINAL(str(found * 10))")])
    with RLM(root).session("banana") as s:
        assert s.ask("how many a?").answer == "3"
        second = s.ask("times ten?")
    assert second.answer == "30"
    assert "how many a?" in root.calls[1]["messages"][0]["content"]  # earlier Q&A shown to the model


def test_arun():
    root = ScriptedBackend([repl("FINAL(context[::-1])")])

    async def main():
        return await RLM(root).arun("q", context="abc")

    assert asyncio.run(main()).answer == "cba"


def test_killed_run_leaves_a_readable_log(tmp_path):
    script = textwrap.dedent(f"""
        import time
        from loopagent import RLM
        from loopagent.backends.scripted import ScriptedBackend
        def reply(messages, loops):
            if len(messages) > 2:
                print("READY", flush=True)
                time.sleep(600)
            return "```repl\\nx = 1\\n```"
        RLM(ScriptedBackend(reply), log_dir={str(tmp_path)!r}).run("q", context="c")
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "READY"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (log,) = tmp_path.glob("*.jsonl")
    kinds = [e.type for e in read_trajectory(log)]
    assert kinds == ["run_start", "root_turn", "repl_exec"]


def test_cli_run_and_show(tmp_path):
    replies = tmp_path / "root.json"
    replies.write_text(json.dumps([repl("print(len(context))"), repl("FINAL(context.split()[0])")]))
    doc = tmp_path / "doc.txt"
    doc.write_text("hello world")
    env = {**os.environ, "COLUMNS": "200"}
    run = subprocess.run(
        [sys.executable, "-m", "loopagent.cli", "run", "first word?", "-c", str(doc), "--root", f"scripted:{replies}",
         "--log-dir", str(tmp_path / "runs"), "--json"], capture_output=True, text=True, env=env, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["answer"] == "hello" and result["reason"] == "final"
    show = subprocess.run([sys.executable, "-m", "loopagent.cli", "show", result["trajectory"]],
                          capture_output=True, text=True, env=env, timeout=120)
    assert show.returncode == 0, show.stderr
    assert "turn 2" in show.stdout and "answer (FINAL)" in show.stdout and "hello" in show.stdout
    bad = subprocess.run([sys.executable, "-m", "loopagent.cli", "run", "q", "--root", "nope:x"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "unknown model spec" in bad.stdout


class _PricedBackend(ScriptedBackend):
    """A scripted model that reports a price per call, like litellm does for API models."""

    async def acomplete(self, messages, **kwargs):
        completion = await super().acomplete(messages, **kwargs)
        completion.usage.usd = 0.01
        return completion


def test_usd_budget_ends_the_run():
    root = _PricedBackend([repl("x = llm_query('p')")] * 20, name="priced")
    result = RLM(root, budget={"max_usd": 0.05}).run("q", context="c")
    assert result.reason == "max_usd"
    assert result.usage.total.usd == pytest.approx(0.05)
    assert result.usage.by_model["priced"].usd == pytest.approx(0.05)


def test_litellm_prices_known_models_offline():
    from litellm import ModelResponse

    from loopagent.backends.litellm import LiteLLMBackend

    response = ModelResponse(model="gpt-4o", choices=[{"message": {"role": "assistant", "content": "hi"}}],
                             usage={"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100})
    usd = LiteLLMBackend("openai/gpt-4o", api_key="sk-test")._price(response)
    assert usd is not None and 0.001 < usd < 0.1


def test_system_prompt_documents_the_repl_and_is_logged(tmp_path):
    root = ScriptedBackend([repl("FINAL('x')")])
    result = RLM(root, looped_child(), log_dir=tmp_path, budget={"max_loop_tokens": 5000}).run("q", context="abc" * 10)
    system = root.calls[0]["messages"][0]["content"]
    for needle in ("llm_query(prompt, loops=None, model=None", "llm_batch", "rlm_query", "FINAL_VAR",
                   "a str of 30 characters", "default 4, at most 8", "5,000 loop-tokens", "20 turns"):
        assert needle in system, needle
    assert events_of(result, "run_start")[0].system_prompt == system


def test_rlm_batch_runs_child_runs_concurrently(tmp_path):
    async def script(messages, loops):
        if messages[1]["content"].startswith("part"):  # a child run: one slow turn
            await asyncio.sleep(0.4)
            return repl("FINAL(context.upper())")
        turns = sum(1 for m in messages if m["role"] == "assistant")
        return (repl("r = rlm_batch(['part a', 'part b', 'part c'], ['x', 'y', 'z'])\nFINAL('-'.join(r))")
                if turns == 0 else "x")

    start = time.monotonic()
    result = RLM(ScriptedBackend(script, name="m"), max_depth=2, log_dir=tmp_path).run("q", context="c")
    elapsed = time.monotonic() - start
    assert result.answer == "X-Y-Z"
    assert len(events_of(result, "run_start")) == 4
    assert elapsed < 3 * 0.4 + 0.5  # the three child runs overlapped


def test_rlm_batch_item_whose_context_is_refused_fails_alone(tmp_path):
    """One child context over the sandbox's limit is that item's error; its sibling child run
    finishes (nothing keeps running after the batch), and every start is paired with its end."""
    child = ScriptedBackend(["```repl\nFINAL('small done')\n```"], name="child")
    root = ScriptedBackend([
        "```repl\nout = rlm_batch(['a', 'b'], contexts=['x' * 300_000, 'small'])\nprint(out)\n```",
        "```repl\ntry:\n    rlm_query('a', context='x' * 300_000)\nexcept Exception as e:\n    print('ERR', e)\n```",
        "```repl\nFINAL('done')\n```",
    ])
    rlm = RLM(root, child, max_depth=2, sandbox=dict(max_context_mb=0.1), log_dir=tmp_path)
    result = rlm.run("q", context="c")
    assert result.answer == "done"
    first, second = (root.calls[i]["messages"][-1]["content"] for i in (1, 2))
    assert "[error:" in first and "'small done'" in first
    assert "ERR" in second  # a single rlm_query raises it
    events = read_trajectory(result.trajectory)
    starts = [(e.kind, e.index) for e in events if e.type == "sub_call_start"]
    ends = [(e.kind, e.index) for e in events if e.type == "sub_call"]
    assert sorted(starts) == sorted(ends) and len(ends) == 3
    assert sum(1 for e in events if e.type == "sub_call" and e.error) == 2
