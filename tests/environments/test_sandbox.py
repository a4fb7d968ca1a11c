"""Behaviour of SandboxREPL: namespace, errors, limits, contexts, host functions."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from loopagent.environments import (
    ContextTooLargeError,
    Environment,
    SandboxClosedError,
    SandboxREPL,
    UnsupportedContextError,
    VariableError,
)


@pytest.fixture(scope="module")
def repl():
    with SandboxREPL(timeout_s=5) as r:
        yield r


@pytest.fixture
def fresh():
    r = SandboxREPL(timeout_s=2)
    yield r
    r.close()


# -- namespace and display ---------------------------------------------------------------


def test_namespace_persists_across_cells(repl):
    assert repl.execute("counter = 41").ok
    assert repl.execute("counter += 1\ncounter").stdout == "42\n"


def test_trailing_expression_is_shown_but_none_is_not(repl):
    assert repl.execute("[1, 2][::-1]").stdout == "[2, 1]\n"
    assert repl.execute("None").stdout == ""
    assert repl.execute("print('a')\nprint('b')").stdout == "a\nb\n"


def test_is_an_environment(repl):
    assert isinstance(repl, Environment)


def test_functions_classes_comprehensions_and_format(repl):
    code = (
        "class Box:\n"
        "    def __init__(self, v):\n"
        "        self.v = v\n"
        "def double(b):\n"
        "    return Box(b.v * 2)\n"
        "vals = [double(Box(i)).v for i in range(4)]\n"
        "print('{} items, last={last}'.format(len(vals), last=vals[-1]))\n"
        "print(f'{vals!r:>20}')\n"
        "a, (b, c) = 1, (2, 3)\n"
        "for k, v in {'x': 1}.items():\n"
        "    pass\n"
        "a + b + c"
    )
    r = repl.execute(code)
    assert r.error is None, r.error
    assert r.stdout == "4 items, last=6\n        [0, 2, 4, 6]\n6\n"


def test_allowed_modules_work_after_privileges_are_dropped(repl):
    code = (
        "import re, json, math, collections, itertools, functools, statistics, string, textwrap\n"
        "import datetime, random, heapq, bisect, csv, difflib, decimal, fractions, hashlib, base64\n"
        "from collections import Counter\n"
        "out = [\n"
        "  re.findall(r'\\d+', 'a1b22'), json.loads('[1]'), math.isqrt(17), Counter('aab')['a'],\n"
        "  list(itertools.islice(itertools.count(), 3)), functools.reduce(lambda a, b: a + b, [1, 2]),\n"
        "  statistics.mean([1, 2, 3]), string.ascii_lowercase[:3], textwrap.shorten('a b c d e f', 7),\n"
        "  datetime.datetime.strptime('2024-01-02', '%Y-%m-%d').day, heapq.nsmallest(1, [3, 1]),\n"
        "  bisect.bisect([1, 3], 2), next(csv.reader(['a,b'])), "
        "round(difflib.SequenceMatcher(None, 'ab', 'ab').ratio()),\n"
        "  str(decimal.Decimal('1.5') * 2), str(fractions.Fraction(1, 3)), hashlib.sha256(b'x').hexdigest()[:4],\n"
        "  base64.b64encode('é'.encode('latin-1')).decode(), random.Random(0).randint(1, 1),\n"
        "]\n"
        "out"
    )
    r = repl.execute(code)
    assert r.error is None, r.error
    assert r.stdout.startswith("[['1', '22'], [1], 4, 2, [0, 1, 2], 3, 2, 'abc', 'a [...]', 2, [1], 1, ['a', 'b'], 1, "
                               "'3.0', '1/3', '2d71', '6Q==', 1]")


# -- errors --------------------------------------------------------------------------------


def test_syntax_error_is_reported_for_the_model(repl):
    r = repl.execute("def f(:\n    pass")
    assert r.error_type == "SyntaxError"
    assert "line 1" in r.error and "invalid syntax" in r.error
    assert repl.execute("1 + 1").stdout == "2\n"


def test_policy_violation_is_a_compile_error(repl):
    r = repl.execute("x = (1).__class__")
    assert r.error_type == "PolicyViolation"
    assert '"__class__"' in r.error


def test_runtime_error_traceback_shows_the_cells_lines_only(repl):
    r = repl.execute("def f(x):\n    return 1 / x\n\ny = 3\nf(0)")
    assert r.error_type == "ZeroDivisionError"
    assert "line 5, in <module>" in r.error and "line 2, in f" in r.error
    assert "return 1 / x" in r.error
    assert "_worker" not in r.error and "_policy" not in r.error and "_guards" not in r.error and "File " not in r.error
    assert repl.get_variable("y") == 3  # statements before the error ran


def test_output_is_capped_with_a_marker():
    with SandboxREPL(max_output_chars=1000) as r:
        res = r.execute("for i in range(10000):\n    print(i)")
        assert res.truncated
        assert len(res.stdout) < 1200
        assert "[output truncated:" in res.stdout
        assert res.stdout.startswith("0\n1\n2\n")


# -- timeouts and crashes --------------------------------------------------------------------


def test_timeout_restarts_worker_and_restores_context_and_functions(fresh):
    fresh.load_context("the context")
    fresh.register("echo", lambda x: x)
    assert fresh.execute("kept = 1").ok
    old_pid = fresh.pid
    r = fresh.execute("while True:\n    pass")
    assert r.error_type == "TimeoutError" and r.restarted
    assert "variable" in r.error and "lost" in r.error
    assert fresh.pid != old_pid and fresh.restarts == 1
    assert fresh.execute("kept").error_type == "NameError"
    assert fresh.execute("echo(context)").stdout == "'the context'\n"


def test_time_in_host_functions_does_not_count_toward_the_timeout():
    with SandboxREPL(timeout_s=1) as r:
        r.register("slow", lambda: time.sleep(1.3) or "done")
        res = r.execute("slow()")
        assert res.error is None, res.error
        assert res.stdout == "'done'\n"
        assert res.host_calls == 1 and res.host_time_s >= 1.3


def test_worker_killed_between_cells_is_replaced(fresh):
    fresh.execute("a = 1")
    os.kill(fresh.pid, signal.SIGKILL)
    time.sleep(0.2)
    r = fresh.execute("a")
    assert r.restarted
    assert fresh.execute("1 + 1").stdout == "2\n"


def test_worker_killed_during_a_cell_is_reported(fresh):
    fresh.register("kill_me", lambda: os.kill(fresh.pid, signal.SIGKILL) or time.sleep(0.3))
    r = fresh.execute("kill_me()\nprint('unreachable')")
    assert r.restarted and r.error_type == "SandboxCrash"
    assert "SIGKILL" in r.error
    assert fresh.execute("2 * 3").stdout == "6\n"


# -- contexts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "context, check, expected",
    [
        ("héllo\ud800", "type(context).__name__, len(context)", "('str', 6)"),
        (b"\x00\xff", "type(context).__name__, context[1]", "('bytes', 255)"),
        (["a", "bb"], "type(context).__name__, context[1]", "('list', 'bb')"),
        ({"k": [1, None, True]}, "type(context).__name__, context['k']", "('dict', [1, None, True])"),
        ((1, 2), "type(context).__name__", "'list'"),
    ],
    ids=["str", "bytes", "list", "dict", "tuple"],
)
def test_in_memory_contexts(repl, context, check, expected):
    repl.load_context(context)
    r = repl.execute(check)
    assert r.error is None, r.error
    assert r.stdout == expected + "\n"


def test_file_context_is_read_by_the_worker(repl, tmp_path):
    f = tmp_path / "doc.txt"
    f.write_text("line one\nline two\n")
    f.chmod(0o600)  # root-only: the worker (nobody) reads it through the passed descriptor
    repl.load_context(f)
    assert repl.execute("context.splitlines()[1]").stdout == "'line two'\n"


def test_directory_context_reads_files_lazily(repl, tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "sub" / "b.md").write_text("beta")
    (tmp_path / "link").symlink_to("/etc/passwd")
    repl.load_context(tmp_path)
    assert repl.execute("context.files").stdout == "['a.txt', 'sub/b.md']\n"
    r = repl.execute("context['sub/b.md'], len(context), 'a.txt' in context, context.sizes['a.txt']")
    assert r.stdout == "('beta', 2, True, 5)\n"
    r = repl.execute("context['link']")
    assert r.error_type == "KeyError"
    r = repl.execute("context['../../etc/passwd']")
    assert r.error_type == "KeyError"
    r = repl.execute("context['x'] = 'y'")
    assert r.error is not None


def test_context_survives_a_restart(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "f.txt").write_text("kept")
    with SandboxREPL(timeout_s=1) as r:
        r.load_context(d)
        assert r.execute("while True:\n    pass").restarted
        assert r.execute("context['f.txt']").stdout == "'kept'\n"


def test_context_is_sent_once_not_per_cell(repl):
    repl.load_context("x" * 5_000_000)
    sent: list[int] = []
    original = repl._chan.send

    def spy(msg, payload=None, **kw):
        sent.append(len(str(msg)) + (len(payload) if payload else 0))
        return original(msg, payload, **kw)

    repl._chan.send = spy
    try:
        for _ in range(3):
            assert repl.execute("len(context)").stdout == "5000000\n"
    finally:
        repl._chan.send = original
    assert sent and max(sent) < 1000


def test_unsupported_context_types_are_rejected(repl):
    with pytest.raises(UnsupportedContextError, match="supported: str, bytes"):
        repl.load_context(object())
    with pytest.raises(TypeError, match="JSON-like"):
        repl.load_context([object()])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        repl.load_context(Path("/no/such/path"))


def test_context_too_large_is_rejected_before_sending():
    with SandboxREPL(max_context_mb=1) as r:
        with pytest.raises(ContextTooLargeError, match="at most 1.0 MB"):
            r.load_context("x" * (2 * 1024 * 1024))
        assert r.execute("1").stdout == "1\n"


def test_reassigning_context_is_undone_with_a_note(repl):
    repl.load_context("original")
    r = repl.execute("context = 'mine'")
    assert "restored" in r.stdout
    assert repl.execute("context").stdout == "'original'\n"


# -- host functions ---------------------------------------------------------------------------


def test_host_function_round_trip_and_errors(repl):
    repl.register("add", lambda a, b=0: a + b)
    repl.register("boom", lambda: 1 / 0)
    repl.register("bad_return", lambda: object())
    assert repl.execute("add(2, b=3), add([1], [2])").stdout == "(5, [1, 2])\n"
    r = repl.execute("try:\n    boom()\nexcept Exception as e:\n    print(type(e).__name__, e)")
    assert r.stdout == "HostFunctionError boom() failed: ZeroDivisionError: division by zero\n"
    assert "cannot cross into the sandbox" in repl.execute("bad_return()").error
    r = repl.execute("add(re, 1)" if False else "import re\nadd(re, 1)")
    assert r.error_type == "TypeError" and "cannot be passed to the host" in r.error


def test_register_validates_names(repl):
    with pytest.raises(ValueError):
        repl.register("_private", print)
    with pytest.raises(ValueError):
        repl.register("not valid", print)
    with pytest.raises(ValueError):
        repl.register("context", print)
    with pytest.raises(TypeError):
        repl.register("x", 42)


def test_host_function_can_read_variables_mid_cell(repl):
    seen = []
    repl.register("FINAL_VAR", lambda name: seen.append(repl.get_variable(name)) or "ok")
    r = repl.execute("answer = {'n': [1, 2]}\nFINAL_VAR('answer')")
    assert r.error is None, r.error
    assert seen == [{"n": [1, 2]}]


def test_async_host_functions_run_concurrently_with_aexecute(repl):
    async def batch(prompts):
        async def one(p):
            await asyncio.sleep(0.2)
            return p.upper()

        return list(await asyncio.gather(*(one(p) for p in prompts)))

    repl.register("batch", batch)

    async def main():
        return await repl.aexecute("batch(['a', 'b', 'c'] * 10)")

    r = asyncio.run(main())
    assert r.error is None, r.error
    assert r.stdout == repr(["A", "B", "C"] * 10) + "\n"
    assert r.host_time_s < 0.2 * 30  # gathered, not one after another
    assert repl.execute("batch(['x'])").stdout == "['X']\n"  # also from sync execute


# -- variables, reset, lifecycle ----------------------------------------------------------------


def test_get_variable(repl):
    repl.execute("t = (1, 'a')\ns = {3}\nimport re\nm = re\nlong_text = 'z' * 10")
    assert repl.get_variable("t") == [1, "a"]
    assert repl.get_variable("s") == [3]
    assert repl.get_variable("long_text", as_text=True) == "z" * 10
    with pytest.raises(VariableError, match="as_text=True"):
        repl.get_variable("m")
    assert "module" in repl.get_variable("m", as_text=True)
    with pytest.raises(VariableError, match="not defined"):
        repl.get_variable("missing")


def test_reset_keeps_context_and_functions(repl):
    repl.load_context("ctx")
    repl.register("one", lambda: 1)
    repl.execute("temp = 5")
    repl.reset()
    assert repl.execute("temp").error_type == "NameError"
    assert repl.execute("context, one()").stdout == "('ctx', 1)\n"


def test_close_stops_worker_and_removes_workdir():
    r = SandboxREPL().start()
    pid, workdir = r.pid, r._workdir
    assert Path(workdir).is_dir()
    r.close()
    r.close()  # idempotent
    assert not Path(workdir).exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(SandboxClosedError):
        r.execute("1")


def test_worker_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("LOOPAGENT_FAKE_API_KEY", "sk-secret-123")
    with SandboxREPL() as r:
        environ = Path(f"/proc/{r.pid}/environ").read_bytes()
        assert b"sk-secret-123" not in environ
        assert b"LOOPAGENT_FAKE_API_KEY" not in environ


@pytest.mark.skipif(os.geteuid() != 0, reason="privilege drop applies to workers started as root")
def test_isolation_layers_applied_as_root(repl):
    iso = repl.isolation
    assert iso["uid"] != 0
    assert iso["netns"] is True
    assert iso["chroot"] is True
    assert iso["tmpfs"] is True
    assert iso["no_new_privs"] is True
    status = Path(f"/proc/{repl.pid}/status").read_text()
    assert "NoNewPrivs:\t1" in status
    if iso["seccomp"]:
        assert "Seccomp:\t2" in status


def test_two_sandboxes_in_parallel_threads():
    results = {}

    def work(name):
        with SandboxREPL() as r:
            r.load_context(name)
            results[name] = r.execute("context * 2").stdout

    threads = [threading.Thread(target=work, args=(n,)) for n in ("ab", "cd")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {"ab": "'abab'\n", "cd": "'cdcd'\n"}


def test_limits_validation():
    with pytest.raises(ValueError):
        SandboxREPL(timeout_s=0)
    with pytest.raises(ValueError):
        SandboxREPL(memory_mb=10)
    with pytest.raises(ValueError):
        SandboxREPL(no_such_limit=1)
