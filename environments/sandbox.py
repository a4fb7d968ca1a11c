"""SandboxREPL: the default environment, a confined worker process per REPL.

The parent (this module) owns the models and everything of value; the worker
(``_worker.py``) holds the context and the model's variables and runs its code
under RestrictedPython, as an unprivileged user, with OS limits, no network and
a seccomp filter. They talk over a socketpair with JSON frames; the parent never
unpickles anything the worker sends.

A cell that runs too long or a worker that dies (memory bomb, crash) does not
take the parent down: the worker is killed and replaced, the context and host
functions are restored, and the model is told that its variables are gone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import json
import keyword
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from loopagent.aio import run_sync

from ._protocol import Channel, ChannelClosed, FrameTooLarge
from .base import (
    RESERVED_NAMES,
    ContextInfo,
    ContextLike,
    ContextNotFoundError,
    ContextTooLargeError,
    ExecResult,
    HostFunction,
    SandboxClosedError,
    SandboxError,
    SandboxStartError,
    UnsupportedContextError,
    VariableError,
    describe_context,
)
from .contexts import PreparedContext, open_readonly, prepare_context
from .workdirs import WORKDIR_PREFIX, lock_workdir, remove_stale_workdirs, sandbox_ids

_WORKER_DIR = str(Path(__file__).resolve().parent)
# -I: ignore PYTHON* variables, the user site and the current directory.
_BOOT = "import sys; sys.path.append(sys.argv.pop(1)); import _worker; _worker.main()"



class SandboxLimits(BaseModel):
    """Resource limits of one sandbox worker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_s: float = Field(
        30.0, gt=0, description="Wall-clock seconds a cell may run, excluding time spent in host functions."
    )
    memory_mb: int = Field(2048, ge=256, description="Address-space limit of the worker (RLIMIT_AS).")
    max_context_mb: float | None = Field(
        None, gt=0, description="Largest context accepted; default a quarter of memory_mb."
    )
    max_output_chars: int = Field(20_000, ge=100, description="stdout kept per cell; the rest is counted and marked.")
    cpu_total_s: int = Field(
        24 * 3600, ge=10, description="CPU seconds over the worker's whole life (hard RLIMIT_CPU)."
    )
    max_open_files: int = Field(64, ge=16, description="RLIMIT_NOFILE of the worker.")
    max_file_mb: int = Field(64, ge=1, description="Largest file the worker may write (RLIMIT_FSIZE).")
    max_disk_mb: int = Field(256, ge=1, description="Size of the worker's private tmpfs working directory (as root).")
    startup_timeout_s: float = Field(20.0, gt=0, description="How long to wait for a new worker to become ready.")
    max_message_mb: float = Field(
        64.0, gt=0, description="Largest message code may send to the host: the arguments of one host call "
        "(an llm_query prompt, a FINAL answer) or a variable read back (FINAL_VAR)."
    )

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb * 1024 * 1024)

    @property
    def max_context_bytes(self) -> int:
        mb = self.max_context_mb if self.max_context_mb is not None else self.memory_mb / 4
        return int(mb * 1024 * 1024)


def _kill(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.kill()
        proc.wait(timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        pass


class SandboxREPL:
    """A persistent, confined Python REPL for untrusted model code.

    Example::

        from pathlib import Path
        from loopagent.environments import SandboxREPL

        with SandboxREPL(timeout_s=10) as repl:
            repl.load_context(Path("docs/"))            # or a str, bytes, list, dict
            repl.register("llm_query", lambda prompt: "...")
            r = repl.execute("hits = [p for p in context.files if p.endswith('.md')]\\nlen(hits)")
            print(r.stdout, r.error)

    Limits come from ``limits=SandboxLimits(...)`` or as keyword arguments
    (``SandboxREPL(timeout_s=5, memory_mb=1024)``). The worker starts on first
    use (or ``start()``); ``isolation`` reports which OS layers applied.
    """

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        *,
        network_isolation: bool = True,
        seccomp: bool = True,
        spin_s: float = 0.0005,
        **limit_overrides: Any,
    ) -> None:
        if limits is not None and limit_overrides:
            limits = limits.model_copy(update=limit_overrides)
            limits = SandboxLimits.model_validate(limits.model_dump())
        self.limits = limits if limits is not None else SandboxLimits(**limit_overrides)
        self.network_isolation = network_isolation
        self.seccomp = seccomp
        self.spin_s = spin_s
        self.restarts = 0
        self.isolation: dict[str, Any] = {}
        self._functions: dict[str, HostFunction] = {}
        self._context: ContextLike = None
        self._context_set = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._chan: Channel | None = None
        self._stderr: Any = None
        self._lock = threading.RLock()
        self._serving_call = False
        # Held by a request a host function makes while its cell waits on it (get_variable, set_variable)
        # and by _serve_call while it ends the call: no such request is still on the channel when the
        # cell's thread uses it again (a request from another thread at that time goes to the lock).
        self._call_lock = threading.Lock()
        self._nested_failure: str | None = None  # why a request made from inside a host call stopped the worker
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed = False
        self._lost_context: str | None = None
        self._uid, self._gid = sandbox_ids()
        # A root parent hands its directory to the sandbox user; anyone else owns theirs.
        remove_stale_workdirs({os.geteuid(), self._uid} if os.geteuid() == 0 else {os.geteuid()})
        self._workdir = tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-")
        lock_fd = lock_workdir(self._workdir)
        if os.geteuid() == 0:
            os.chown(self._workdir, self._uid, self._gid)
        self._proc_box: list[subprocess.Popen[bytes] | None] = [None]
        self._finalizer = weakref.finalize(self, SandboxREPL._cleanup, self._proc_box, self._workdir, lock_fd)

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> SandboxREPL:
        """Start the worker now (otherwise it starts on first use)."""
        with self._lock:
            self._ensure_started()
        return self

    def __enter__(self) -> SandboxREPL:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        """Process id of the current worker, if one is running."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def close(self) -> None:
        """Stop the worker and delete its working directory. Idempotent.

        Safe from any thread, also while a cell runs in another one: the worker is killed
        first, so that cell ends at once (reporting a crash, never restarting it).
        """
        if self._closed:
            return
        self._closed = True
        _kill(self._proc_box[0])
        with self._lock:
            self._stop_worker()
            self._finalizer()
            if self._executor is not None:
                self._executor.shutdown(wait=False)

    @staticmethod
    def _cleanup(proc_box: list[Any], workdir: str, lock_fd: int | None) -> None:
        _kill(proc_box[0])
        shutil.rmtree(workdir, ignore_errors=True)
        if lock_fd is not None:
            os.close(lock_fd)

    def _ensure_started(self) -> None:
        if self._closed:
            raise SandboxClosedError("this SandboxREPL was closed; create a new one")
        if self._chan is None:
            self._start_worker()

    def _start_worker(self) -> None:
        self._stop_worker()
        parent_sock, child_sock = socket.socketpair()
        parent_fd_sock, child_fd_sock = socket.socketpair()
        config = {
            "limits": {**self.limits.model_dump(), "max_context_mb": None},
            "workdir": self._workdir,
            "uid": self._uid,
            "gid": self._gid,
            "network_isolation": self.network_isolation,
            "seccomp": self.seccomp,
            "spin_s": self.spin_s,
        }
        env = {"PATH": os.defpath, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": self._workdir,
               "TMPDIR": self._workdir}
        self._stderr = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(
                [
                    sys.executable, "-I", "-c", _BOOT, _WORKER_DIR,
                    f"{child_sock.fileno()},{child_fd_sock.fileno()}", json.dumps(config),
                ],
                pass_fds=(child_sock.fileno(), child_fd_sock.fileno()),
                env=env,
                cwd=self._workdir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self._stderr,
                start_new_session=True,
            )
        except OSError as e:
            parent_sock.close()
            parent_fd_sock.close()
            raise SandboxStartError(f"could not start the sandbox worker ({sys.executable}): {e}") from e
        finally:
            child_sock.close()
            child_fd_sock.close()
        self._proc_box[0] = self._proc
        # Every frame the worker sends is bounded: a host call or a variable by max_message_mb (the worker
        # refuses larger ones itself), an exec result by its capped output (4 bytes a character at most).
        max_frame = self.limits.max_message_bytes + 4 * self.limits.max_output_chars + (1 << 20)
        self._chan = Channel(parent_sock, fd_sock=parent_fd_sock, max_frame=max_frame, spin_s=self.spin_s)
        try:
            msg, _ = self._chan.recv(timeout=self.limits.startup_timeout_s)
        except (TimeoutError, ChannelClosed, OSError, ValueError) as e:
            detail = self._worker_stderr()
            self._stop_worker()
            raise SandboxStartError(
                f"the sandbox worker did not become ready ({type(e).__name__}). "
                f"Worker stderr:\n{detail or '(empty)'}"
            ) from None
        if msg.get("op") != "ready":
            self._stop_worker()
            raise SandboxStartError(f"unexpected first message from the sandbox worker: {msg.get('op')!r}")
        self.isolation = dict(msg.get("isolation", {}))
        if self._functions:
            self._request({"op": "register", "names": list(self._functions)})
        if self._context_set:
            try:
                self._send_context(self._prepare(self._context))
            except (ContextNotFoundError, ContextTooLargeError, UnsupportedContextError) as e:
                # The file or directory changed since it was loaded. The new worker is fine
                # without a context; the next result tells the model (see _take_lost_context).
                self._context, self._context_set = None, False
                self._lost_context = str(e)

    def _stop_worker(self) -> None:
        # The worker holds nothing worth a graceful exit (its files live in a private
        # tmpfs), and SIGKILL + a blocking wait is ~1 ms against ~15 ms for polling.
        _kill(self._proc)
        if self._chan is not None:
            self._chan.close()
        if self._stderr is not None:
            self._stderr.close()
        self._proc = self._chan = self._stderr = None

    def _worker_stderr(self, limit: int = 4000) -> str:
        if self._stderr is None:
            return ""
        try:
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - limit))
            return self._stderr.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""

    def _describe_exit(self) -> str:
        proc = self._proc
        if proc is None:
            return "the worker is gone"
        try:
            code = proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return "the worker stopped answering"
        if code < 0:
            name = signal.Signals(-code).name
            hint = {
                "SIGKILL": f" (often the memory limit of {self.limits.memory_mb} MB)",
                "SIGXCPU": " (CPU time limit)",
                "SIGSEGV": " (a crash, e.g. too deep recursion in C code)",
                "SIGSYS": " (a forbidden system call)",
            }.get(name, "")
            return f"the worker was killed by {name}{hint}"
        return f"the worker exited with status {code}"

    def _take_lost_context(self) -> str | None:
        lost, self._lost_context = self._lost_context, None
        return lost

    def _replace_worker(self) -> None:
        if self._closed:
            raise SandboxClosedError("the sandbox was closed while the cell ran")
        self.restarts += 1
        self._stop_worker()
        self._start_worker()

    # -- context ---------------------------------------------------------------------
    def load_context(self, context: ContextLike) -> ContextInfo:
        """Hand ``context`` to the worker once; code sees it as ``context``.

        ``str`` -> str, ``bytes`` -> bytes, ``list``/``dict`` (JSON-like) -> list/dict,
        ``Path`` to a file -> its text (read by the worker from a read-only file
        descriptor, never through the parent), ``Path`` to a directory -> a read-only
        mapping of relative path -> text whose files are read on first access.
        Returns what was loaded (type and size; a directory is walked once).

        A ``list``/``dict`` must be JSON-like: str, int, float, bool, None, lists and
        dicts with str keys, nested at most ``MAX_CONTEXT_NESTING`` (100) levels, no
        reference cycles; anything else is refused before it is sent.

        Text means UTF-8, decoded strictly: a file that is not valid UTF-8 is refused
        with :class:`UnsupportedContextError` (pass ``path.read_bytes()`` to load its
        bytes, or ``path.read_text(encoding=...)`` for text in another encoding); in a
        directory, ``context[path]`` raises ``UnicodeDecodeError`` for such a file and
        ``context.read_bytes(path)`` gives its bytes. Nothing is ever decoded lossily.

        Errors (all :class:`SandboxError`): :class:`ContextNotFoundError`,
        :class:`ContextTooLargeError`, :class:`UnsupportedContextError` (a type the
        sandbox cannot hold, a non-UTF-8 file, an unreadable path). Errors found
        before sending leave the previous context in place; a file the worker
        refuses leaves no context loaded (the worker frees the old one first, so two
        large contexts never need to fit together).
        """
        prepared = self._prepare(context)
        with self._lock:
            self._ensure_started()
            self._lost_context = None  # a context lost in a restart is replaced by this one
            self._send_context(prepared)
            self._context, self._context_set = context, True
        return describe_context(context, files=prepared.files if prepared.kind == "dir" else None)

    def _prepare(self, context: ContextLike) -> PreparedContext:
        return prepare_context(context, limit=self.limits.max_context_bytes, memory_mb=self.limits.memory_mb)

    def _open_readonly(self, path: Path) -> int:
        return open_readonly(path, limit=self.limits.max_context_bytes, memory_mb=self.limits.memory_mb)

    def _send_context(self, ctx: PreparedContext) -> None:
        assert self._chan is not None
        msg: dict[str, Any] = {"op": "load_context", "kind": ctx.kind}
        if ctx.kind == "file":
            assert ctx.path is not None
            fd = self._open_readonly(ctx.path)
            try:
                self._chan.send(msg, fds=[fd])
            finally:
                os.close(fd)
            reply = self._recv_reply()
        elif ctx.kind == "dir":
            assert ctx.path is not None
            msg.update(name=ctx.path.name, files=[list(f) for f in ctx.files])
            self._dir_root = ctx.path
            self._dir_files = [f[0] for f in ctx.files]
            self._chan.send(msg)
            reply = self._recv_reply()
        else:
            self._chan.send(msg, ctx.payload)
            reply = self._recv_reply()
        if reply.get("op") == "ok":
            return
        # The worker freed its previous context before reading this one: none is loaded.
        self._context, self._context_set = None, False
        if reply.get("error_type") == "NotUTF8":
            raise UnsupportedContextError(
                f"context file {ctx.description!r} is not UTF-8 text (byte 0x{int(reply.get('byte', 0)):02x} at "
                f"offset {int(reply.get('offset', 0)):,}); a pathlib.Path file is loaded as text. Pass "
                "path.read_bytes() to load its bytes, or path.read_text(encoding=...) if it is text in another "
                "encoding"
            )
        raise SandboxError(f"the sandbox could not load the context: {reply.get('message')}")

    # -- host functions --------------------------------------------------------------
    def register(self, name: str, fn: HostFunction) -> None:
        """Expose ``fn`` to sandboxed code as ``name``.

        Arguments and return values cross the process boundary as JSON (str,
        numbers, bool, None, lists, dicts). ``fn`` may be a coroutine function; it
        then runs on the loop that awaits :meth:`aexecute` (or a private loop for
        :meth:`execute`), so a batch helper can fan out concurrently. An exception
        in ``fn`` reaches the code as ``HostFunctionError`` with its type and message
        (cut to ``max_output_chars``), never its traceback.
        """
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
            raise ValueError(f"host function name {name!r} must be a public Python identifier")
        if name in RESERVED_NAMES:
            raise ValueError(f"{name!r} is reserved for the loaded context")
        if not callable(fn):
            raise TypeError(f"host function {name!r} must be callable, got {type(fn).__name__}")
        with self._lock:
            self._functions[name] = fn
            if self._chan is not None:
                self._request({"op": "register", "names": list(self._functions)})

    def _serve_call(self, msg: dict[str, Any], loop: asyncio.AbstractEventLoop | None) -> None:
        assert self._chan is not None
        name = msg.get("name")
        fn = self._functions.get(name) if isinstance(name, str) else None
        if fn is None:
            self._chan.send({"op": "raise", "message": f"{name!r} is not a host function"})
            return
        args, kwargs = msg.get("args", []), msg.get("kwargs", {})
        self._serving_call = True
        try:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = run_sync(value, loop)
            reply = {"op": "return", "value": value}
            try:
                Channel.encode(reply)
            except (TypeError, ValueError) as e:
                reply = {"op": "raise", "message": f"{name}() returned a value that cannot cross into the sandbox: {e}"}
        except Exception as e:
            try:
                message = str(e)
            except Exception:  # an exception whose __str__ fails must not take the exec down with it
                message = "(its message could not be read)"
            # The message may quote the arguments (a key, a prompt): up to max_message_mb, several
            # times over once repr'd and escaped. The model sees no more than its output limit of it.
            limit = self.limits.max_output_chars
            if len(message) > limit:
                message = f"{message[:limit]}... [{len(message) - limit:,} more characters of the message not shown]"
            reply = {"op": "raise", "message": f"{name}() failed: {type(e).__name__}: {message}"}
        finally:
            with self._call_lock:
                self._serving_call = False
        if self._chan is None:
            # the function's own request to the worker (get_variable, as FINAL_VAR does) found it
            # dead or out of turn and stopped it: nobody is left to answer; _execute reports it
            return
        self._chan.send(reply)

    def _serve_open(self, msg: dict[str, Any]) -> None:
        assert self._chan is not None
        index = msg.get("index")
        files = getattr(self, "_dir_files", [])
        if not isinstance(index, int) or not 0 <= index < len(files):
            self._chan.send({"op": "raise", "message": "no such file in the context directory"})
            return
        try:
            fd = self._open_readonly(self._dir_root / files[index])
        except ContextTooLargeError:
            limit = self.limits.max_context_bytes / 2**20
            self._chan.send({"op": "raise", "message": (
                f"cannot read {files[index]!r}: it is larger than the {limit:,.1f} MB the sandbox reads at once"
            )})
            return
        except (OSError, ValueError, TypeError) as e:
            self._chan.send({"op": "raise", "message": f"cannot read {files[index]!r}: {e}"})
            return
        try:
            self._chan.send({"op": "fd"}, fds=[fd])
        finally:
            os.close(fd)

    # -- execution -------------------------------------------------------------------
    def execute(self, code: str) -> ExecResult:
        """Run one cell of code in the persistent namespace.

        Never raises for problems in the code itself: syntax errors, exceptions,
        policy violations, timeouts and worker crashes come back in the result.
        """
        return self._execute(code, None)

    async def aexecute(self, code: str) -> ExecResult:
        """Run one cell without blocking the event loop; async host functions run on it."""
        loop = asyncio.get_running_loop()
        # A thread of its own: nested runs (a cell waiting on child runs whose cells
        # wait on theirs) must not starve a shared pool.
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sandbox")
        return await loop.run_in_executor(self._executor, self._execute, code, loop)

    def _execute(self, code: str, loop: asyncio.AbstractEventLoop | None) -> ExecResult:
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, got {type(code).__name__}")
        with self._lock:
            start = time.perf_counter()
            if self._proc is not None and self._proc.poll() is not None:
                return self._failed(start, 0.0, 0, "SandboxCrash", (
                    f"SandboxCrash: {self._describe_exit()} before this cell ran; run it again."
                ))
            self._ensure_started()
            lost = self._take_lost_context()
            if lost is not None:  # restarted on this use, after an interrupted cell
                return ExecResult(
                    stdout="",
                    error=(
                        "SandboxCrash: the sandbox was restarted before this cell ran: every variable you defined "
                        f"is lost, and `context` could not be loaded again ({lost}). Run the cell again."
                    ),
                    error_type="SandboxCrash",
                    duration_s=time.perf_counter() - start,
                    restarted=True,
                )
            assert self._chan is not None
            host_time, calls = 0.0, 0
            try:
                try:
                    self._chan.send({"op": "exec", "code": code})
                except OSError:
                    return self._failed(start, 0.0, 0, "SandboxCrash", (
                        f"SandboxCrash: {self._describe_exit()} before this cell ran; run it again."
                    ))
                budget = self.limits.timeout_s
                while True:
                    t0 = time.perf_counter()
                    try:
                        msg, _ = self._chan.recv(timeout=max(budget, 0.0))
                    except TimeoutError:
                        return self._failed(start, host_time, calls, "TimeoutError", (
                            f"TimeoutError: the cell ran longer than {self.limits.timeout_s:g} s and was stopped."
                        ))
                    except (ChannelClosed, FrameTooLarge, OSError, ValueError):
                        return self._failed(start, host_time, calls, "SandboxCrash", (
                            f"SandboxCrash: {self._describe_exit()} while running the cell."
                        ))
                    budget -= time.perf_counter() - t0
                    op = msg["op"]
                    if op == "result":
                        return ExecResult(
                            stdout=str(msg.get("stdout", "")),
                            error=_opt_str(msg.get("error")),
                            error_type=_error_type(msg.get("error_type")),
                            truncated=bool(msg.get("truncated")),
                            duration_s=time.perf_counter() - start,
                            host_time_s=host_time,
                            host_calls=calls,
                        )
                    if op == "error":
                        # The worker's serve loop caught a failure outside the cell's own code
                        # (e.g. a MemoryError while building the result) and is still serving.
                        return ExecResult(
                            stdout="",
                            error=(
                                f"{msg.get('message') or 'the cell failed in the sandbox'}\n"
                                "[the cell did not complete; the sandbox is still running and your variables "
                                "are kept as the cell left them]"
                            ),
                            error_type=_error_type(msg.get("error_type")) or "SandboxError",
                            duration_s=time.perf_counter() - start,
                            host_time_s=host_time,
                            host_calls=calls,
                        )
                    t1 = time.perf_counter()
                    try:
                        self._nested_failure = None
                        if op == "call":
                            calls += 1
                            self._serve_call(msg, loop)
                        elif op == "open":
                            self._serve_open(msg)
                    except OSError:  # the worker died while the host was answering
                        return self._failed(start, host_time, calls, "SandboxCrash", (
                            f"SandboxCrash: {self._describe_exit()} while running the cell."
                        ))
                    if self._chan is None:
                        # a host function's own request (get_variable) stopped the worker: it timed
                        # out, died or answered out of turn while the cell waited on the call
                        return self._failed(start, host_time, calls, "SandboxCrash", (
                            "SandboxCrash: the worker failed while a host function read from it "
                            f"({self._nested_failure or 'the worker is gone'})."
                        ))
                    if op not in ("call", "open"):
                        return self._failed(start, host_time, calls, "SandboxCrash", (
                            f"SandboxCrash: the worker sent an unexpected message ({op!r})."
                        ))
                    host_time += time.perf_counter() - t1
            except BaseException:
                # Interrupted mid-cell (KeyboardInterrupt, a bug): the worker's state is
                # unknown, so it is replaced on next use.
                self._stop_worker()
                raise

    def _failed(self, start: float, host_time: float, calls: int, error_type: str, message: str) -> ExecResult:
        """Replace the worker after a timeout or crash and report it to the model."""
        try:
            self._replace_worker()
            lost = self._take_lost_context()
            note = (
                " The sandbox was restarted: every variable you defined is lost; "
                "`context` and the helper functions are available again."
            ) if lost is None else (
                " The sandbox was restarted: every variable you defined is lost, and `context` could not be "
                f"loaded again ({lost}); the helper functions are available."
            )
        except (SandboxStartError, SandboxClosedError) as e:
            note = f" The sandbox could not be restarted: {e}"
        return ExecResult(
            stdout="",
            error=message + note,
            error_type=error_type,
            duration_s=time.perf_counter() - start,
            host_time_s=host_time,
            host_calls=calls,
            restarted=True,
        )

    # -- variables -------------------------------------------------------------------
    def get_variable(self, name: str, *, as_text: bool = False) -> Any:
        """Read variable ``name`` from the sandbox.

        JSON-like values come back as Python values (tuples and sets as lists);
        ``as_text=True`` returns ``str(value)`` for any value. Host functions may
        call this while their cell is running (that is how ``FINAL_VAR`` works).
        """
        reply = self._in_call_or_locked(lambda: self._request({"op": "get", "name": name, "as_text": as_text}))
        if reply.get("op") != "value":
            # the worker answered out of turn (model code it ran to read the variable misbehaved)
            self._stop_worker()
            self._nested_failure = f"it answered {reply.get('op')!r} when asked for a variable"
            raise SandboxError(f"the sandbox answered {reply.get('op')!r} when asked for {name!r}; it is restarted")
        if not reply.get("found"):
            raise VariableError(f"variable {name!r} is not defined in the sandbox", missing=True)
        if "too_large" in reply:
            raise VariableError(f"variable {name!r} cannot be read: {reply['too_large']}")
        if "error" in reply:
            if as_text:
                raise VariableError(
                    f"variable {name!r} (a {reply.get('type')}) cannot be shown as text: {reply['error']}"
                )
            raise VariableError(
                f"variable {name!r} (a {reply.get('type')}) is not JSON-like ({reply['error']}); "
                f"use get_variable({name!r}, as_text=True)"
            )
        if as_text:
            return reply["value"]
        try:
            return json.loads(reply["json"])
        except RecursionError:
            raise VariableError(
                f"variable {name!r} is nested too deeply to read back; use get_variable({name!r}, as_text=True)"
            ) from None

    def set_variable(self, name: str, value: Any) -> None:
        """Set variable ``name`` in the sandbox to a copy of ``value`` (JSON-like: str, numbers,
        bool, None, lists, dicts with str keys), sent as JSON. Model code can read and change it
        like its own variables; it is lost, like them, when the worker is replaced.

        ``context``, host function names and names starting with ``_`` cannot be set
        (``ValueError``); a value that is not JSON-like raises ``TypeError``, one larger than the
        context limit :class:`ContextTooLargeError`. Host functions may call this while their
        cell is running (the cell sees the variable from then on).

        Example::

            repl.set_variable("notes", [{"page": 3, "text": "..."}])
            repl.execute("print(len(notes))")
        """
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
            raise ValueError(f"variable name {name!r} must be a public Python identifier")
        if name == "context" or name in self._functions:
            raise ValueError(f"{name!r} is reserved in the sandbox (the context or a host function)")
        try:
            payload = json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8", "surrogatepass")
        except (TypeError, ValueError) as e:
            raise TypeError(f"the value of {name!r} is not JSON-like: {e}") from None
        except RecursionError:
            raise TypeError(f"the value of {name!r} is nested too deeply to send") from None
        if len(payload) > self.limits.max_context_bytes:
            raise ContextTooLargeError(
                f"the value of {name!r} takes {len(payload) / 2**20:,.1f} MB, more than the "
                f"{self.limits.max_context_bytes / 2**20:,.1f} MB the sandbox accepts at once"
            )
        def send() -> dict[str, Any]:
            assert self._chan is not None
            self._chan.send({"op": "set", "name": name}, payload)
            return self._recv_reply()

        reply = self._in_call_or_locked(send)
        if reply.get("op") not in ("ok", "error"):
            # the worker answered out of turn (as in get_variable)
            self._stop_worker()
            self._nested_failure = f"it answered {reply.get('op')!r} when asked to set a variable"
            raise SandboxError(f"the sandbox answered {reply.get('op')!r} when asked to set {name!r}; it is restarted")
        if reply.get("op") != "ok":
            raise SandboxError(f"the sandbox could not set {name!r}: {reply.get('message')}")

    def _in_call_or_locked(self, request: Any) -> dict[str, Any]:
        """``request()`` (a request to the worker and its reply) from a host function while its cell
        waits on it, else under the lock. The cell's thread holds the lock then, so waiting for it would
        never end (an async host function runs on another thread); the worker answers while it waits."""
        with self._call_lock:
            if self._serving_call:
                if self._chan is None:
                    raise SandboxError(f"the sandbox worker is gone ({self._nested_failure or 'stopped'})")
                return request()
        with self._lock:
            self._ensure_started()
            return request()

    def reset(self) -> None:
        """Forget every variable; the context and host functions stay."""
        with self._lock:
            self._ensure_started()
            self._request({"op": "reset"})

    # -- plumbing --------------------------------------------------------------------
    def _request(self, msg: dict[str, Any]) -> dict[str, Any]:
        assert self._chan is not None
        self._chan.send(msg)
        reply = self._recv_reply()
        if reply.get("op") == "error":
            raise SandboxError(f"sandbox request {msg['op']!r} failed: {reply.get('message')}")
        return reply

    def _recv_reply(self) -> dict[str, Any]:
        """The worker's reply to a request other than ``exec``. Model code may run in the worker
        while it answers (a generator's ``finally`` when load_context frees the old context or
        garbage collection runs, a ``__str__`` during ``get_variable``) and send a host call or a
        file request first: those are answered here (a call is refused: host functions serve
        cells only) and never taken for the reply. One deadline for all of it, so a finalizer
        that keeps calling cannot hold the parent."""
        assert self._chan is not None
        deadline = time.monotonic() + max(self.limits.timeout_s, 30.0)
        while True:
            try:
                reply, _ = self._chan.recv(timeout=max(deadline - time.monotonic(), 0.0))
                op = reply.get("op")
                if op == "call":
                    self._chan.send({"op": "raise", "message": (
                        f"{str(reply.get('name'))[:100]}() cannot be called here: host functions answer only "
                        "while a cell runs"
                    )})
                elif op == "open":
                    self._serve_open(reply)
                else:
                    return reply
            except (TimeoutError, ChannelClosed, OSError, ValueError) as e:
                detail = self._describe_exit()
                self._stop_worker()
                self._nested_failure = f"{type(e).__name__}: {detail}"
                raise SandboxError(f"the sandbox worker failed ({type(e).__name__}: {detail})") from None


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


#: An exception class's name is the model's choice (``E.__name__ = 'x' * 10**7``) and ends up in logs.
MAX_ERROR_TYPE_CHARS = 200


def _error_type(value: Any) -> str | None:
    text = _opt_str(value)
    if text is not None and len(text) > MAX_ERROR_TYPE_CHARS:
        return text[:MAX_ERROR_TYPE_CHARS] + f"... [{len(text) - MAX_ERROR_TYPE_CHARS:,} more characters]"
    return text
