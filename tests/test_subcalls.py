"""Sub-calls from REPL code: named models, per-call settings, the prompt guard and the cache."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from loopagent import RLM, ConfigError
from loopagent.backends.local import LocalLoopedBackend
from loopagent.backends.scripted import ScriptedBackend
from loopagent.cache import CacheKey, DiskCache, SubCallCache
from loopagent.errors import InvalidLoopsError
from loopagent.guard import split_prompt
from loopagent.trajectory import read_trajectory


def repl(code: str) -> str:
    return f"```repl\n{textwrap.dedent(code).strip()}\n```"


def echo(name: str, **kw) -> ScriptedBackend:
    """A child that answers '<name>:<prompt>' and records its calls."""
    return ScriptedBackend(lambda messages, loops: f"{name}:{messages[-1]['content']}", name=name, **kw)


def sub_calls(result):
    return [e for e in read_trajectory(result.trajectory) if e.type == "sub_call"]


def outputs(root: ScriptedBackend) -> list[str]:
    """What the REPL printed back to the root, turn by turn."""
    return [c["messages"][-1]["content"] for c in root.calls[1:]]


# -- named models and per-call settings --------------------------------------------------------------


def test_named_models_route_each_call_and_usage_is_per_model(tmp_path):
    child = echo("child")
    fast = echo("fast")
    deep = echo("deep", looped=True, default_loops=4, max_loops=16)
    root = ScriptedBackend([
        repl("""
            a = llm_query('one')
            b = llm_query('two', model='deep', loops=8)
            c = llm_batch(['three', 'four'], model='fast')
            print(a, b, c)
        """),
        repl("FINAL('done')"),
    ])
    result = RLM(root, child, models={"fast": fast, "deep": deep}, log_dir=tmp_path).run("q", context="x")
    assert result.answer == "done"
    assert "child:one deep:two ['fast:three', 'fast:four']" in outputs(root)[0]
    assert [c["messages"][-1]["content"] for c in child.calls] == ["one"]
    assert [(c["messages"][-1]["content"], c["loops"]) for c in deep.calls] == [("two", 8)]
    assert sorted(c["messages"][-1]["content"] for c in fast.calls) == ["four", "three"]
    by_model = result.usage.by_model
    assert by_model["child"].calls == 1 and by_model["deep"].calls == 1 and by_model["fast"].calls == 2
    assert by_model["deep"].loop_tokens > 0 and by_model["fast"].loop_tokens == 0
    logged = sorted((e.prompt, e.alias, e.model) for e in sub_calls(result))
    assert logged == [("four", "fast", "fast"), ("one", None, "child"), ("three", "fast", "fast"),
                      ("two", "deep", "deep")]
    config = read_trajectory(result.trajectory)[0].config
    assert config["models"]["deep"] == {"name": "deep", "looped": True, "default_loops": 4, "max_loops": 16}


def test_models_may_be_spec_strings(tmp_path):
    replies = tmp_path / "fast.json"
    replies.write_text(json.dumps(["from the file"]))
    root = ScriptedBackend([repl("FINAL(llm_query('q', model='fast'))")], name="root")
    result = RLM(root, echo("child"), models={"fast": f"scripted:{replies}"}).run("q", context="x")
    assert result.answer == "from the file"
    assert result.usage.by_model["scripted"].calls == 1


def test_bad_model_names_loops_and_settings_reach_the_model_and_the_run_goes_on():
    child = echo("child")
    deep = echo("deep", looped=True, default_loops=4, max_loops=16)
    code = """
        for kwargs in [dict(model='huge'), dict(model=3), dict(model='deep', loops=99), dict(model='deep', loops=0),
                       dict(max_tokens=0), dict(max_tokens=2.5), dict(temperature=-1), dict(temperature='hot'),
                       dict(temperature=float('nan'))]:
            try:
                llm_query('x', **kwargs)
            except Exception as e:
                print('ERR', e)
        try:
            llm_batch(['a', 'b'], model='huge')
        except Exception as e:
            print('ERR', e)
        print(llm_query('fine', model='deep'))
    """
    root = ScriptedBackend([repl(code), repl("FINAL('ok')")])
    result = RLM(root, child, models={"deep": deep}).run("q", context="x")
    assert result.answer == "ok" and result.finished
    out = outputs(root)[0]
    errors = [line for line in out.splitlines() if line.startswith("ERR")]
    assert len(errors) == 10, out
    assert "UnknownModelError" in errors[0] and "no model named 'huge'" in errors[0] and "'deep'" in errors[0]
    assert "model must be a name (str), got 3" in errors[1]
    assert "InvalidLoopsError" in errors[2] and "loops=99 exceeds the maximum of 16 for deep" in errors[2]
    assert "InvalidLoopsError" in errors[3]
    assert all("InvalidSettingError" in e for e in errors[4:6]) and "max_tokens must be a positive integer" in errors[4]
    assert all("InvalidSettingError" in e and "temperature must be a finite number >= 0" in e for e in errors[6:9])
    assert "UnknownModelError" in errors[9] and "llm_batch()" in errors[9]
    assert "deep:fine" in out
    assert [c["messages"][-1]["content"] for c in deep.calls] == ["fine"] and child.calls == []


def test_per_call_settings_reach_the_backend():
    child = echo("child")
    root = ScriptedBackend([
        repl("""
            llm_query('a', max_tokens=64, temperature=0.5)
            llm_batch(['b', 'c'], max_tokens=32)
            llm_query('d')
        """),
        repl("FINAL('ok')"),
    ])
    RLM(root, child, max_tokens_per_call=100).run("q", context="x")
    seen = {c["messages"][-1]["content"]: (c.get("max_tokens"), c.get("temperature")) for c in child.calls}
    assert seen == {"a": (64, 0.5), "b": (32, None), "c": (32, None), "d": (100, None)}


def test_settings_are_logged_per_sub_call(tmp_path):
    root = ScriptedBackend([repl("llm_query('a', max_tokens=8, temperature=0.2)"), repl("FINAL('ok')")])
    result = RLM(root, echo("child"), log_dir=tmp_path).run("q", context="x")
    (call,) = sub_calls(result)
    assert call.settings == {"max_tokens": 8, "temperature": 0.2} and not call.cached


def test_rlm_query_with_a_named_model_makes_it_the_child_runs_root(tmp_path):
    deep = ScriptedBackend([repl("FINAL('deep answer')")], name="deep")
    root = ScriptedBackend([repl("FINAL(rlm_query('sub', context='ctx', model='deep'))")])
    result = RLM(root, echo("child"), models={"deep": deep}, max_depth=2, log_dir=tmp_path).run("q", context="x")
    assert result.answer == "deep answer"
    assert deep.calls[0]["messages"][1]["content"] == "sub"
    (call,) = sub_calls(result)
    assert call.kind == "rlm_query" and call.alias == "deep" and call.child_run_id


def test_system_prompt_lists_named_models_and_the_new_arguments():
    deep = echo("hf:deep-ckpt", looped=True, default_loops=4, max_loops=16, context_window=2048)
    root = ScriptedBackend([repl("FINAL('x')")])
    RLM(root, echo("child", context_window=4096), models={"fast": echo("litellm:fast"), "deep": deep}).run(
        "q", context="x")
    system = root.calls[0]["messages"][0]["content"]
    for needle in ("llm_query(prompt, loops=None, model=None, max_tokens=None, temperature=None)",
                   "llm_batch(prompts, loops=None, model=None, max_tokens=None, temperature=None)",
                   "rlm_query(prompt, context=None, loops=None, model=None)",
                   "- 'fast': litellm:fast, not looped", "- 'deep': hf:deep-ckpt, looped: default 4 loops, at most 16",
                   "reads at most 2,048 tokens per prompt", "The default child reads at most 4,096 tokens",
                   "identical greedy calls are answered once"):
        assert needle in system, needle


def test_bad_models_argument_is_a_config_error():
    root = ScriptedBackend(["x"])
    for models, message in (({"has space": echo("a")}, "model name 'has space'"),
                            ({"ok": 3}, "must be a backend or a spec string"),
                            (["fast"], "models must be a dict")):
        with pytest.raises(ConfigError, match=message):
            RLM(root, models=models)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="oversize must be one of"):
        RLM(root, oversize="truncate")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cache must be"):
        RLM(root, cache=3)  # type: ignore[arg-type]


def test_adaptive_policy_checks_named_looped_models_for_a_gate():
    gated = echo("child", looped=True, max_loops=8, exit_gate=True)
    with pytest.raises(ConfigError, match="the 'deep' model deep has none"):
        RLM(gated, gated, loop_policy="adaptive", models={"deep": echo("deep", looped=True, max_loops=8)})


# -- the prompt guard --------------------------------------------------------------------------------


def test_a_prompt_over_the_childs_window_is_not_sent_and_the_model_reads_both_sizes(tmp_path):
    child = echo("child", context_window=50)
    root = ScriptedBackend([
        repl("""
            try:
                llm_query('word ' * 200)
            except Exception as e:
                print('ERR', e)
            print(llm_batch(['short', 'word ' * 200]))
        """),
        repl("FINAL('went on')"),
    ])
    result = RLM(root, child, log_dir=tmp_path).run("q", context="x")
    assert result.answer == "went on" and result.finished
    out = outputs(root)[0]
    tokens = child.count_tokens("word " * 200)
    assert f"the prompt is {tokens:,} tokens but child's context window is 50 tokens: not sent" in out
    assert "Split the text into chunks of at most" in out and "llm_batch" in out
    assert "PromptTooLongError" in out
    assert f"['child:short', \"[error: PromptTooLongError: llm_batch(): the prompt is {tokens} tokens" in out
    assert [c["messages"][-1]["content"] for c in child.calls] == ["short"]  # the long ones never went out
    refused = [e for e in sub_calls(result) if e.error]
    assert len(refused) == 2 and all("PromptTooLongError" in e.error for e in refused)


def test_the_reply_is_reserved_from_the_window():
    child = echo("child", context_window=100)
    prompt = "word " * 60  # about 60 tokens: fits 100, not 100 - 50
    root = ScriptedBackend([
        repl(f"""
            print(llm_query({prompt!r})[:10])
            try:
                llm_query({prompt!r}, max_tokens=50)
            except Exception as e:
                print('ERR', e)
            try:
                llm_query('hi', max_tokens=100)
            except Exception as e:
                print('ERR', e)
        """),
        repl("FINAL('ok')"),
    ])
    RLM(root, child).run("q", context="x")
    out = outputs(root)[0]
    assert "child:word" in out
    assert "50 of them kept for the reply, so a prompt may have 50" in out
    assert "max_tokens=100 leaves no room for a prompt in child's context window of 100 tokens" in out
    assert len(child.calls) == 1


def test_a_backend_without_a_known_window_is_not_guarded():
    child = echo("child")
    root = ScriptedBackend([repl("print(len(llm_query('word ' * 5000)))"), repl("FINAL('ok')")])
    RLM(root, child).run("q", context="x")
    assert len(child.calls) == 1


def test_split_policy_asks_each_piece_and_joins_the_answers(tmp_path):
    child = ScriptedBackend(lambda messages, loops: f"<{len(messages[-1]['content'])}>", name="child",
                            context_window=60)
    lines = [f"line {i} has a few words in it" for i in range(40)]
    text = "\n".join(lines) + "\n"
    root = ScriptedBackend([repl(f"FINAL(llm_query({text!r}))")])
    result = RLM(root, child, oversize="split", log_dir=tmp_path).run("q", context="x")
    pieces = [c["messages"][-1]["content"] for c in child.calls]
    assert len(pieces) > 1
    assert "".join(pieces) == text  # consecutive, nothing lost, nothing added
    assert all(child.count_tokens(p) <= 60 for p in pieces)
    assert all(p.endswith("\n") for p in pieces)  # cut at line breaks
    assert result.answer == "\n\n".join(f"<{len(p)}>" for p in pieces)
    (call,) = sub_calls(result)
    assert call.parts == len(pieces) and call.error is None
    assert result.usage.by_model["child"].calls == len(pieces)
    assert call.usage["prompt_tokens"] == result.usage.by_model["child"].prompt_tokens
    assert call.usage["calls"] == len(pieces) and call.usage["cache_hits"] == 0


def test_split_prompt_cuts_at_whitespace_and_keeps_the_text():
    count = lambda s: len(s.split())  # noqa: E731 - a whitespace tokenizer
    text = " ".join(f"w{i}" for i in range(100))
    pieces = split_prompt(text, 30, count)
    assert "".join(pieces) == text and all(count(p) <= 30 for p in pieces) and len(pieces) >= 4
    assert all(p.endswith(" ") for p in pieces[:-1])
    assert split_prompt("short", 30, count) == ["short"]
    dense = "x" * 500  # no whitespace at all: cut anywhere
    pieces = split_prompt(dense, 10, lambda s: len(s) // 10 + 1)
    assert "".join(pieces) == dense and all(len(p) // 10 + 1 <= 10 for p in pieces)


# -- the cache ---------------------------------------------------------------------------------------


def greedy(name: str = "child", **kw) -> ScriptedBackend:
    return echo(name, temperature=0.0, **kw)


def test_repeated_greedy_calls_are_answered_once_and_counted_as_hits(tmp_path):
    child = greedy()
    root = ScriptedBackend([
        repl("a = llm_query('q')"),
        repl("b = llm_query('q')\nc = llm_batch(['q', 'r', 'r'])\nprint(a, b, c)"),
        repl("FINAL('ok')"),
    ])
    result = RLM(root, child, log_dir=tmp_path).run("q", context="x")
    assert "child:q child:q ['child:q', 'child:r', 'child:r']" in outputs(root)[1]
    assert sorted(c["messages"][-1]["content"] for c in child.calls) == ["q", "r"]
    u = result.usage
    assert u.by_model["child"].calls == 2 and u.total.cache_hits == 3
    assert u.by_model["child"].cache_hits == 3 and u.by_depth[1].cache_hits == 3 and u.by_depth[0].cache_hits == 0
    calls = sub_calls(result)
    assert sum(c.cached for c in calls) == 3 and len(calls) == 5
    assert all(c.usage == {"calls": 0, "cache_hits": 1} and c.response.startswith("child:") for c in calls if c.cached)
    end = [e for e in read_trajectory(result.trajectory) if e.type == "run_end"][-1]
    assert end.usage["total"]["cache_hits"] == 3


def test_concurrent_identical_calls_share_one_call_in_flight():
    async def slow(messages, loops):
        await asyncio.sleep(0.2)
        return "slow:" + messages[-1]["content"]

    child = ScriptedBackend(slow, name="child", temperature=0.0)
    root = ScriptedBackend([repl("print(llm_batch(['same'] * 5))"), repl("FINAL('ok')")])
    result = RLM(root, child).run("q", context="x")
    assert "['slow:same', 'slow:same', 'slow:same', 'slow:same', 'slow:same']" in outputs(root)[0]
    assert len(child.calls) == 1 and result.usage.total.cache_hits == 4


def test_calls_that_differ_in_loops_model_or_settings_are_not_shared():
    child = greedy(looped=True, default_loops=4, max_loops=8)
    other = greedy("other")
    root = ScriptedBackend([
        repl("llm_query('q'); llm_query('q', loops=2); llm_query('q', max_tokens=5); llm_query('q', model='o')"),
        repl("FINAL('ok')"),
    ])
    result = RLM(root, child, models={"o": other}).run("q", context="x")
    assert len(child.calls) == 3 and len(other.calls) == 1 and result.usage.total.cache_hits == 0


def test_sampling_calls_are_not_cached():
    unknown = echo("child")  # the script's decoding is unknown, as an API model's default: not greedy
    root = ScriptedBackend([repl("llm_query('q'); llm_query('q')"), repl("FINAL('ok')")])
    RLM(root, unknown).run("q", context="x")
    assert len(unknown.calls) == 2
    child = greedy()
    root = ScriptedBackend([repl("llm_query('q', temperature=0.7); llm_query('q', temperature=0.7)\n"
                                 "llm_query('q', temperature=0); llm_query('q', temperature=0)"),
                            repl("FINAL('ok')")])
    result = RLM(root, child).run("q", context="x")
    assert len(child.calls) == 3 and result.usage.total.cache_hits == 1
    sampling = echo("child", temperature=1.0)
    root = ScriptedBackend([repl("llm_query('q', temperature=0); llm_query('q', temperature=0)"), repl("FINAL('ok')")])
    RLM(root, sampling).run("q", context="x")
    assert len(sampling.calls) == 1  # an explicit temperature=0 is greedy whatever the default


def test_cache_off():
    child = greedy()
    root = ScriptedBackend([repl("llm_query('q'); llm_batch(['q', 'q'])"), repl("FINAL('ok')")])
    result = RLM(root, child, cache=False).run("q", context="x")
    assert len(child.calls) == 3 and result.usage.total.cache_hits == 0
    assert "answered once" not in root.calls[0]["messages"][0]["content"]


def test_the_cache_lives_for_one_run_without_a_folder():
    child = greedy()
    rlm = RLM(ScriptedBackend([repl("FINAL(llm_query('q'))")] * 2), child)
    rlm.run("q", context="x")
    rlm.run("q", context="x")
    assert len(child.calls) == 2


def test_failed_calls_are_not_cached():
    failures = iter([True, False])

    def flaky(messages, loops):
        if next(failures):
            raise RuntimeError("boom")
        return "fine"

    child = ScriptedBackend(flaky, name="child", temperature=0.0)
    root = ScriptedBackend([repl("print(llm_batch(['q']))\nprint(llm_query('q'))\nprint(llm_query('q'))"),
                            repl("FINAL('ok')")])
    result = RLM(root, child).run("q", context="x")
    out = outputs(root)[0]
    assert "boom" in out and out.count("fine") == 2
    assert len(child.calls) == 2 and result.usage.total.cache_hits == 1


def test_on_disk_cache_is_shared_by_two_rlms_and_costs_nothing(tmp_path):
    folder = tmp_path / "cache"
    script = [repl("print(llm_batch(['a', 'b']))"), repl("FINAL(llm_query('a'))")]
    first_child = greedy()
    first = RLM(ScriptedBackend(list(script)), first_child, cache=folder).run("q", context="x")
    assert len(first_child.calls) == 2 and first.usage.total.cache_hits == 1
    assert (folder / "subcalls.sqlite3").is_file()
    second_child = greedy()
    second = RLM(ScriptedBackend(list(script)), second_child, cache=str(folder), log_dir=tmp_path).run(
        "q", context="x")
    assert second.answer == "child:a"
    assert second_child.calls == []  # every reply came from the folder
    u = second.usage.by_model["child"]
    assert u.calls == 0 and u.cache_hits == 3 and u.prompt_tokens == u.completion_tokens == u.loop_tokens == 0
    assert all(c.cached for c in sub_calls(second))
    assert read_trajectory(second.trajectory)[0].config["cache"] == str(folder)


def test_on_disk_cache_is_shared_with_another_process(tmp_path):
    folder = tmp_path / "cache"
    key = CacheKey(model="child", prompt="from elsewhere", temperature=0.0)
    writer = textwrap.dedent(f"""
        from loopagent.cache import CacheKey, DiskCache
        key = CacheKey.model_validate_json({key.model_dump_json()!r})
        DiskCache({str(folder)!r}).put(key, "written by another process")
    """)
    subprocess.run([sys.executable, "-c", writer], check=True, timeout=60)
    child = greedy()
    root = ScriptedBackend([repl("FINAL(llm_query('from elsewhere'))")])
    result = RLM(root, child, cache=folder).run("q", context="x")
    assert result.answer == "written by another process" and child.calls == []
    assert len(DiskCache(folder)) == 1


def test_disk_cache_unit_get_put_and_bad_folder(tmp_path):
    disk = DiskCache(tmp_path / "c")
    key = CacheKey(model="m", prompt="p", loops=2, temperature=0.0)
    assert disk.get(key) is None
    disk.put(key, "r")
    disk.put(key, "later")  # append-only: the first reply stays
    assert disk.get(key) == "r" and disk.get(key.model_copy(update={"loops": 3})) is None
    disk.close()
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="cannot use"):
        DiskCache(blocker)


def test_shared_failure_reaches_every_waiter():
    async def main():
        cache = SubCallCache()
        key = CacheKey(model="m", prompt="p", temperature=0.0)
        calls = 0

        async def boom():
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.05)
            raise ValueError("down")

        results = await asyncio.gather(*(cache.get_or_call(key, boom) for _ in range(3)), return_exceptions=True)
        assert calls == 1 and all(isinstance(r, ValueError) for r in results)

        async def fine():
            return "up"

        assert await cache.get_or_call(key, fine) == ("up", "call")  # the failure was not kept
        assert await cache.get_or_call(key, fine) == ("up", "memory")

    asyncio.run(main())


# -- backends honour or refuse the settings -----------------------------------------------------------


class _RecordingLocal(LocalLoopedBackend):
    scheme = "rec"

    def _open(self):
        class Loaded:
            tokenizer = None

        return Loaded()

    async def _agenerate(self, conversations, budgets, max_new, gate, temperature):
        from loopagent.backends.base import Completion

        self.seen = (budgets, max_new, temperature)
        return [Completion(text="x", model=self.name) for _ in conversations]


def _checkpoint(tmp_path: Path, **config) -> Path:
    path = tmp_path / "ckpt"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "looped", "max_loops": 8, "default_loops": 4,
                                                  **config}))
    return path


def test_local_backends_take_max_tokens_and_temperature_per_call_and_refuse_the_rest(tmp_path):
    backend = _RecordingLocal(_checkpoint(tmp_path, max_position_embeddings=2048), max_new_tokens=99)
    assert backend.context_window == 2048 and backend.default_temperature == 0.0 and backend.default_max_tokens == 99
    msgs = [{"role": "user", "content": "hi"}]
    backend.complete(msgs)
    assert backend.seen == ([4], 99, 0.0)
    backend.complete(msgs, loops=2, max_tokens=7, temperature=0.8)
    assert backend.seen == ([2], 7, 0.8)
    with pytest.raises(ConfigError, match="does not take top_p"):
        backend.complete(msgs, top_p=0.9)
    with pytest.raises(ConfigError, match="temperature must be a finite number >= 0"):
        backend.complete(msgs, temperature=-0.1)
    with pytest.raises(ConfigError, match="max_tokens must be a positive integer"):
        backend.complete(msgs, max_tokens=0)
    with pytest.raises(InvalidLoopsError):
        backend.complete(msgs, loops=9)


def test_local_backend_without_max_position_embeddings_has_no_known_window(tmp_path):
    assert _RecordingLocal(_checkpoint(tmp_path)).context_window is None


def test_scripted_backend_checks_its_settings():
    backend = ScriptedBackend(["a", "b"], context_window=10, temperature=0.0)
    assert backend.context_window == 10 and backend.default_temperature == 0.0
    with pytest.raises(ConfigError):
        backend.complete([{"role": "user", "content": "x"}], temperature=-1)
    with pytest.raises(ConfigError):
        ScriptedBackend(["a"], context_window=0)


def test_eval_strategies_see_the_window_and_decoding_of_their_models(tmp_path):
    from loopagent.evals.baselines import RecursiveStrategy
    from loopagent.evals.grid import RunConfig

    child = greedy(context_window=321, looped=True, default_loops=2, max_loops=8)
    rlm = RecursiveStrategy(echo("root"), child, {"cache": str(tmp_path / "c")}).rlm(RunConfig(kind="rlm",
                                                                                               child_loops=4))
    assert rlm.child.default_loops == 4  # the sweep's budget, over the same model
    assert rlm.child.context_window == 321 and rlm.child.default_temperature == 0.0
    assert rlm.cache == tmp_path / "c"


def test_the_viewer_counts_no_call_for_a_hit(tmp_path):
    from loopagent.view.model import usage_tables

    root = ScriptedBackend([repl("llm_batch(['q', 'q', 'q'])"), repl("FINAL('ok')")], name="root")
    result = RLM(root, greedy(), log_dir=tmp_path).run("q", context="x")
    tables = usage_tables(read_trajectory(result.trajectory))
    assert tables["by_model"]["child"]["calls"] == 1 == result.usage.by_model["child"].calls


def test_models_under_one_name_are_refused_while_the_cache_is_on():
    """Replies are cached by the model's identity: two different models that share one would be
    answered with each other's replies, so the RLM refuses them unless the cache is off."""
    with pytest.raises(ConfigError, match=r"the child and the model 'deep' are different models with the same "
                                          r"cache identity \('echo'\)"):
        RLM(echo("root"), echo("echo", temperature=0.0), models={"deep": echo("echo", temperature=0.0)})
    RLM(echo("root"), echo("echo"), models={"deep": echo("echo")}, cache=False)  # no cache: no clash
    same = echo("echo")
    RLM(echo("root"), same, models={"deep": same})  # one model under two names is fine


def test_litellm_models_with_other_options_have_other_cache_identities():
    from loopagent.backends.litellm import LiteLLMBackend

    low = LiteLLMBackend("openai/o3", temperature=0, reasoning_effort="low")
    high = LiteLLMBackend("openai/o3", temperature=0, reasoning_effort="high")
    assert low.name == high.name and low.cache_identity != high.cache_identity
    one = LiteLLMBackend.served("http://127.0.0.1:8000/v1", model="a")
    other = LiteLLMBackend.served("http://127.0.0.1:8000/v1", model="b")
    assert one.name == other.name and one.cache_identity != other.cache_identity
    RLM(echo("root"), low, models={"high": high})  # accepted: their replies are kept apart


def test_every_sub_call_start_is_paired_with_its_end(tmp_path):
    """Cache hits, refusals and split prompts included: one start and one end per sub-call."""
    child = echo("child", temperature=0.0, context_window=40)
    root = ScriptedBackend([
        repl("""
            a = llm_batch(['same', 'same', 'word ' * 100])
            b = llm_query('same')
            print(a[0], b)
        """),
        repl("FINAL('done')"),
    ])
    result = RLM(root, child, oversize="split", log_dir=tmp_path).run("q", context="x")
    assert result.answer == "done"
    events = read_trajectory(result.trajectory)
    starts = sorted((e.run_id, e.kind, e.index) for e in events if e.type == "sub_call_start")
    ends = sorted((e.run_id, e.kind, e.index) for e in events if e.type == "sub_call")
    assert starts == ends and len(ends) == 4
    assert any(e.cached for e in events if e.type == "sub_call")
    assert any((e.parts or 0) > 1 for e in events if e.type == "sub_call")


def test_a_white_space_prompt_over_the_window_is_refused_even_when_splitting():
    child = echo("child", context_window=20)
    root = ScriptedBackend([
        repl("""
            try:
                llm_query(' \\n' * 400)
            except Exception as e:
                print(e)
        """),
        repl("FINAL('done')"),
    ])
    assert RLM(root, child, oversize="split").run("q", context="x").answer == "done"
    assert "PromptTooLongError" in outputs(root)[0]
    assert child.calls == []


@pytest.mark.parametrize("value", [10**400, -(10**400)])
def test_a_temperature_too_large_for_a_float_is_a_setting_error(value):
    root = ScriptedBackend([repl(f"""
        try:
            llm_query('p', temperature={value})
        except Exception as e:
            print(e)
    """), repl("FINAL('done')")])
    assert RLM(root, echo("child")).run("q", context="x").answer == "done"
    assert "InvalidSettingError" in outputs(root)[0]


@pytest.mark.parametrize("value", ["x", 0, -1, 1.5, True])
def test_max_tokens_per_call_is_checked_at_construction(value):
    with pytest.raises(ConfigError, match="max_tokens_per_call"):
        RLM(echo("root"), max_tokens_per_call=value)


def test_an_empty_cache_path_is_a_config_error():
    for bad in ("", "  ", Path("")):
        with pytest.raises(ConfigError, match="cache must be True, False or a folder path"):
            RLM(echo("root"), cache=bad)
