"""SandboxREPL under the faults an attacker (or an unlucky user) tries: floods, binary
files, deep nesting, a killed parent, bad paths. Each test stays fast and light."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from loopagent.environments import (
    ContextNotFoundError,
    SandboxError,
    SandboxREPL,
    UnsupportedContextError,
    VariableError,
)


@pytest.fixture(scope="module")
def repl():
    with SandboxREPL(timeout_s=5) as r:
        yield r


# -- print flood -----------------------------------------------------------------------------


def test_print_flood_keeps_output_bounded_and_variables_alive():
    # 300 MB of prints against a 256 MB worker: before the fix RestrictedPython's `printed`
    # buffer kept all of it, the worker ran out of memory and every variable was lost.
    with SandboxREPL(memory_mb=256, timeout_s=10, max_output_chars=1000) as r:
        assert r.execute("keep = 7").ok
        res = r.execute("for i in range(30000):\n    print('x' * 10000)")
        assert res.error is None, res.error
        assert not res.restarted and res.truncated
        assert "[output truncated:" in res.stdout and len(res.stdout) < 1200
        assert r.execute("keep").stdout == "7\n"


def test_printed_variable_is_capped_with_a_marker():
    with SandboxREPL(max_output_chars=1000) as r:
        res = r.execute("for i in range(100):\n    print('y' * 100)\nsaved = printed")
        assert res.error is None, res.error
        saved = r.get_variable("saved")
        assert saved.startswith("y" * 100 + "\n") and len(saved) < 1200
        assert "[printed output truncated: 9,100 more characters not kept]" in saved


def test_error_reply_to_exec_is_a_model_readable_error(repl):
    # Any `error` reply of the worker's serve loop (a MemoryError there, a bug) must reach
    # the model as an error of this cell, with the worker and its variables kept.
    assert repl.execute("survivor = 'here'").ok
    pid = repl.pid
    chan = repl._chan
    original = chan.send

    def corrupt(msg, payload=None, **kw):
        if msg.get("op") == "exec":
            msg = {**msg, "op": "exec_unknown"}
        return original(msg, payload, **kw)

    chan.send = corrupt
    try:
        res = repl.execute("1")
    finally:
        del chan.send  # back to the class's method
    assert res.error is not None and "unexpected message" not in res.error
    assert "unknown op" in res.error and "variables are kept" in res.error
    assert res.error_type == "SandboxError" and not res.restarted
    assert repl.pid == pid and repl.execute("survivor").stdout == "'here'\n"


# -- binary files -------------------------------------------------------------------------------


def test_binary_file_context_is_refused_with_the_fix(repl, tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("text")
    repl.load_context(good)
    binary = tmp_path / "image.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    with pytest.raises(UnsupportedContextError, match=r"image\.png.*not UTF-8.*offset 0.*read_bytes\(\)"):
        repl.load_context(binary)
    # the previous context was already released in the worker; both sides agree it is gone
    assert repl.execute("context").error_type == "NameError"
    assert repl.execute("1 + 1").stdout == "2\n"
    assert repl.load_context(binary.read_bytes()).type == "bytes"
    assert repl.execute("context[:4]").stdout == "b'\\x89PNG'\n"


def test_binary_file_in_a_directory_context_says_how_to_read_it(repl, tmp_path):
    (tmp_path / "notes.txt").write_text("héllo")
    (tmp_path / "blob.bin").write_bytes(b"ok\xff\xfe")
    repl.load_context(tmp_path)
    assert repl.execute("context['notes.txt']").stdout == "'héllo'\n"
    res = repl.execute("context['blob.bin']")
    assert res.error_type == "UnicodeDecodeError"
    assert "position 2" in res.error and "context.read_bytes('blob.bin')" in res.error
    assert repl.execute("context.read_bytes('blob.bin')").stdout == "b'ok\\xff\\xfe'\n"
    assert repl.execute("context.read_bytes('notes.txt').decode()").stdout == "'héllo'\n"
    assert repl.execute("context.read_bytes('missing')").error_type == "KeyError"


# -- deep nesting -------------------------------------------------------------------------------


def _nested(depth: int, kind: type) -> object:
    value: object = 0
    for _ in range(depth):
        value = [value] if kind is list else {"k": value}
    return value


@pytest.mark.parametrize("kind", [list, dict])
def test_deeply_nested_context_is_refused_before_sending(repl, kind):
    repl.load_context("before")
    with pytest.raises(UnsupportedContextError, match="nested more than 100 levels"):
        repl.load_context(_nested(10_000, kind))
    assert repl.execute("context").stdout == "'before'\n"  # nothing was sent
    assert repl.load_context(_nested(100, kind)).type == kind.__name__  # the limit itself loads


def test_deeply_nested_context_fails_cleanly_through_rlm_run():
    from loopagent import RLM
    from loopagent.backends.scripted import ScriptedBackend

    root = ScriptedBackend(["```repl\nFINAL(1)\n```"])
    with pytest.raises(UnsupportedContextError, match="nested more than 100 levels"):
        RLM(root).run("q", context={"deep": _nested(10_000, list)})
    assert root.calls == []


def test_cyclic_and_non_str_key_contexts_are_refused(repl):
    cycle: list = []
    cycle.append(cycle)
    with pytest.raises(UnsupportedContextError, match="cycle"):
        repl.load_context(cycle)
    # json would silently turn 1 into "1": context[1] would then fail in the REPL
    with pytest.raises(UnsupportedContextError, match="keys must be str"):
        repl.load_context({"a": {1: "one"}})


# -- stale working directories --------------------------------------------------------------------


def test_workdirs_of_killed_parents_are_removed_by_the_next_sandbox(tmp_path, monkeypatch):
    script = textwrap.dedent("""
        import sys, time
        from loopagent.environments import SandboxREPL
        r = SandboxREPL().start()
        print(r._workdir, flush=True)
        time.sleep(60)
    """)
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env, text=True)
    try:
        stale = Path(proc.stdout.readline().strip())
    finally:
        proc.kill()  # SIGKILL: no finalizer of the parent runs
        proc.wait()
        proc.stdout.close()
    assert stale.is_dir() and stale.parent == tmp_path and f"-{proc.pid}-" in stale.name
    other = tmp_path / "loopagent-sandbox-notapid"  # not ours by name: left alone
    other.mkdir()
    # a dead pid whose directory is still locked: a live parent in another pid namespace
    locked = tmp_path / f"loopagent-sandbox-{proc.pid}-locked"
    locked.mkdir()
    lock_fd = os.open(locked, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    live = SandboxREPL()  # a live parent's directory (this process) is never touched
    try:
        newer = SandboxREPL()
        assert not stale.exists()
        assert Path(live._workdir).is_dir() and other.is_dir() and locked.is_dir() and Path(newer._workdir).is_dir()
        assert Path(newer._workdir).name.startswith(f"loopagent-sandbox-{os.getpid()}-")
        newer.close()
    finally:
        live.close()
        os.close(lock_fd)


# -- user errors are the environment's errors --------------------------------------------------------


def test_symlinked_file_context_is_loaded_through_its_target(repl, tmp_path):
    target = tmp_path / "real.txt"
    target.write_text("through the link")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    info = repl.load_context(link)
    assert info.type == "file" and info.path == str(link)
    assert repl.execute("context").stdout == "'through the link'\n"


def test_path_errors_are_sandbox_errors(repl, tmp_path):
    with pytest.raises(ContextNotFoundError):
        repl.load_context(tmp_path / "missing.txt")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(UnsupportedContextError, match="neither a regular file nor a directory"):
        repl.load_context(fifo)


def test_deeply_nested_variable_is_a_variable_error(repl):
    assert repl.execute("deep = []\nfor _ in range(5000):\n    deep = [deep]").ok
    with pytest.raises(VariableError, match=r"'deep' \(a list\) is not JSON-like \(RecursionError"):
        repl.get_variable("deep")
    with pytest.raises(VariableError, match=r"'deep' \(a list\) cannot be shown as text: RecursionError"):
        repl.get_variable("deep", as_text=True)
    assert issubclass(VariableError, SandboxError)


def test_context_that_cannot_be_restored_after_a_crash_is_reported(tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("fine")
    with SandboxREPL(timeout_s=1) as r:
        r.load_context(doc)
        doc.write_bytes(b"\xff\xfe now binary")
        os.kill(r.pid, signal.SIGKILL)
        res = r.execute("1")  # never raises: the failed restore is part of the result
        assert res.restarted and "could not be loaded again" in res.error and "not UTF-8" in res.error
        assert r.execute("context").error_type == "NameError"
        assert r.execute("1").stdout == "1\n"


def test_directory_file_over_the_limit_is_refused_with_a_model_readable_reason(tmp_path):
    (tmp_path / "big.txt").write_bytes(b"x" * (2 * 1024 * 1024))
    with SandboxREPL(max_context_mb=1) as r:
        r.load_context(tmp_path)
        res = r.execute("context['big.txt']")
        assert "cannot read 'big.txt': it is larger than the 1.0 MB the sandbox reads at once" in res.error
        assert not res.restarted


# -- messages from code to the host are bounded ----------------------------------------------------


def test_a_host_call_larger_than_max_message_is_refused_in_the_cell():
    with SandboxREPL(max_message_mb=1) as repl:
        repl.register("echo", lambda text: len(text))
        r = repl.execute("keep = 7\necho('x' * 2_000_000)")
        assert r.error_type == "ValueError" and "larger than the 1.0 MB a host call takes" in r.error
        assert not r.restarted
        assert repl.execute("print(keep, echo('x' * 1000))").stdout == "7 1000\n"


def test_a_variable_larger_than_max_message_cannot_be_read_back():
    with SandboxREPL(max_message_mb=1) as repl:
        repl.execute("big = 'y' * 2_000_000\nsmall = 'ok'")
        with pytest.raises(VariableError, match="cannot be read: it holds 1.9 MB, more than the 1.0 MB"):
            repl.get_variable("big", as_text=True)
        with pytest.raises(VariableError, match="cannot be read"):
            repl.get_variable("big")
        assert repl.get_variable("small") == "ok"
