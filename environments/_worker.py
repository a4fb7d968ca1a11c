"""The sandbox worker process: a persistent namespace that runs model code.

Started by :class:`loopagent.environments.SandboxREPL` as
``python -I -c <boot> DIR FD,FD_FOR_FDS CONFIG`` with this folder on ``sys.path`` (so nothing
from loopagent, and no user site-packages, is imported here). It imports what
the sandbox needs, confines itself (see ``_hardening``), says ``ready`` and then
serves requests from the parent over the socket ``FD`` until it closes.

Requests (parent -> worker): ``exec``, ``load_context``, ``register``, ``get``,
``set``, ``reset``, ``ping``. While a cell runs, the worker sends ``call`` (a host
function) or ``open`` (a file of a directory context) and waits for the answer;
while it waits it also serves nested ``get`` and ``set`` requests, which let a host
function such as ``FINAL_VAR`` read (or set) a variable mid-call.
"""

from __future__ import annotations

import collections.abc
import json
import os
import resource
import sys
import traceback
from collections.abc import Callable
from typing import Any

import _guards
import _hardening
import _policy
from _protocol import Channel, ChannelClosed, FrameTooLarge

_CODE_CACHE_SIZE = 256
_RESERVED_NOTE = "[note: `{name}` is provided by the sandbox and was restored; keep your own data under another name]\n"


class CappedOutput(_guards.CappedText):
    """stdout of one cell: keeps the first ``limit`` characters and counts the rest."""

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self.add(text)
        return len(text)

    def flush(self) -> None:
        pass

    def getvalue(self) -> str:
        text = self.text()
        if self.dropped:
            text += f"\n... [output truncated: {self.dropped:,} more characters not shown]\n"
        return text


class HostFunctionError(RuntimeError):
    """A host function (llm_query, ...) failed in the parent process."""


HostFunctionError.__module__ = "builtins"


#: What the worker passes to make a ContextDir: model code holds the class (``type(context)``) but not this.
_CONTEXT_MAKER = object()


class ContextDir(collections.abc.Mapping):
    """A directory given as context: a read-only mapping of relative path -> text.

    Files are read on first access (the parent hands over a read-only file
    descriptor; the sandbox never opens paths itself) and cached up to a byte
    budget. ``context.files`` lists the paths, ``context.sizes`` their sizes.
    ``context[path]`` is the file's text and raises ``UnicodeDecodeError`` (never
    a garbled string) for a file that is not UTF-8; ``context.read_bytes(path)``
    gives any file's bytes.
    """

    def __init__(self, name: str, entries: list[list[Any]], opener: Callable[[int], int], cache_bytes: int,
                 *, maker: object = None) -> None:
        if maker is not _CONTEXT_MAKER:
            # type(context)(name, [[path, 0]], lambda i: fd, n)[path] read any descriptor of the worker
            # (its channel to the parent too) with os.read and closed it; the sandbox makes its context only
            raise TypeError("a directory context is made by the sandbox only; use `context`")
        self.name = name
        self.files = [e[0] for e in entries]
        self.sizes = {e[0]: int(e[1]) for e in entries}
        self.total_size = sum(self.sizes.values())
        self._index = {path: i for i, path in enumerate(self.files)}
        self._opener = opener
        self._cache: dict[tuple[bool, str], str | bytes] = {}
        self._cache_bytes = cache_bytes
        self._cached = 0

    def __getitem__(self, path: str) -> str:
        return self._load(path, text=True)  # type: ignore[return-value]

    def read(self, path: str) -> str:
        """The text of ``path`` (same as ``context[path]``)."""
        return self[path]

    def read_bytes(self, path: str) -> bytes:
        """The bytes of ``path``, for files that are not UTF-8 text."""
        return self._load(path, text=False)  # type: ignore[return-value]

    def __contains__(self, path: object) -> bool:
        # Mapping's default would read the file (and fail on a binary one).
        return path in self._index

    def _load(self, path: str, *, text: bool) -> str | bytes:
        key = (text, path)
        if key in self._cache:
            return self._cache[key]
        if path not in self._index:
            raise KeyError(f"{path!r} is not a file of the context directory (see context.files)")
        data = _read_fd_bytes(self._opener(self._index[path]))
        value = _decode_file(data, path) if text else data
        while self._cache and self._cached + len(value) > self._cache_bytes:
            old = next(iter(self._cache))
            self._cached -= len(self._cache.pop(old))
        if len(value) <= self._cache_bytes:
            self._cache[key] = value
            self._cached += len(value)
        return value

    def __iter__(self) -> Any:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return (
            f"<directory context {self.name!r}: {len(self.files)} files, {self.total_size:,} bytes; "
            "list them with context.files, read one with context[path] (or context.read_bytes(path))>"
        )


def _read_fd_bytes(fd: int) -> bytes:
    try:
        size = os.fstat(fd).st_size
        chunks = []
        while True:
            chunk = os.read(fd, max(size, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _decode_file(data: bytes, path: str) -> str:
    """Strict UTF-8: a binary file must fail loudly, not turn into U+FFFD soup."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UnicodeDecodeError(
            "utf-8", data, e.start, e.end,
            f"{e.reason}; {path!r} is not UTF-8 text, context.read_bytes({path!r}) gives its bytes",
        ) from None


_MAX_NESTING = 100


def _plain_args(value: Any, limit: int = _MAX_NESTING, depth: int = 0) -> Any:
    """Host-call arguments as exact lists and dicts, nested at most ``limit`` levels deep (the
    parent's JSON decoder must never hit its recursion limit). Each container of the model's is
    read once, here, and the encoder gets the copy: checked in place, a list subclass's
    ``__iter__`` (or a dict subclass's ``values()``) answered the check shallow and the encoder
    (``__iter__`` again, ``items()``) 960 levels deep, which the parent could not decode: the
    worker taken for dead and restarted, the model's variables lost."""
    if isinstance(value, (list, tuple, set, frozenset)):
        children = list(value)
    elif isinstance(value, dict):
        children = [(key, item) for key, item in value.items()]
    else:
        return value
    if depth >= limit:
        raise ValueError(f"arguments to host functions may be nested at most {limit} levels deep")
    if isinstance(value, dict):
        return {key: _plain_args(item, limit, depth + 1) for key, item in children}
    return [_plain_args(item, limit, depth + 1) for item in children]


def _describe(e: BaseException) -> str:
    """``Type: message`` of an exception whose ``__str__`` may itself be model code."""
    try:
        return f"{type(e).__name__}: {str.__str__(str(e))}"
    except BaseException:
        return type(e).__name__


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    raise TypeError(
        f"a value of type {type(value).__name__} cannot be passed to the host; "
        "use str, int, float, bool, None, list or dict"
    )


class Worker:
    def __init__(self, chan: Channel, config: dict[str, Any]) -> None:
        self.chan = chan
        self.limits = config["limits"]
        self.max_output = int(self.limits["max_output_chars"])
        self.reading = False  # while True, model code runs only to read a variable back
        self.max_message = int(float(self.limits["max_message_mb"]) * 1024 * 1024)
        # `printed` keeps no more than the cell's output may show (see PrintCollector).
        _guards.PrintCollector.max_chars = self.max_output
        self.cpu_per_exec = float(self.limits["timeout_s"]) + 2.0
        self.cpu_hard = int(self.limits["cpu_total_s"])
        self.cpu_soft: int | None = None  # the soft RLIMIT_CPU this worker set last
        self.host_names: list[str] = []
        self.context: Any = None
        self.has_context = False
        self.code_cache: dict[str, _policy.CompiledCell] = {}
        self.ns = self._fresh_namespace()

    # -- namespace ---------------------------------------------------------
    def _fresh_namespace(self) -> dict[str, Any]:
        ns = _guards.make_namespace()
        self.ns = ns
        self._install_reserved()
        return ns

    def _reserved(self) -> dict[str, Any]:
        names: dict[str, Any] = {name: self._stub(name) for name in self.host_names}
        if self.has_context:
            names["context"] = self.context
        return names

    def _install_reserved(self) -> None:
        self._reserved_values = self._reserved()
        self.ns.update(self._reserved_values)

    def _restore_reserved(self, out: CappedOutput) -> None:
        for name, value in self._reserved_values.items():
            if self.ns.get(name) is not value:
                self.ns[name] = value
                out.write(_RESERVED_NOTE.format(name=name))

    def _stub(self, name: str) -> Callable[..., Any]:
        def host_function(*args: Any, **kwargs: Any) -> Any:
            if self.reading:
                # the parent is waiting for a variable, not serving calls: a call now would be
                # taken as the reply (a model __str__ or items() runs while a variable is read)
                raise RuntimeError(f"{name}() cannot be called while the host reads a variable")
            plain_args, plain_kwargs = _plain_args([args, kwargs])
            msg = {"op": "call", "name": name, "args": plain_args, "kwargs": plain_kwargs}
            try:
                return self._request(msg, max_bytes=self.max_message)
            except FrameTooLarge:
                raise ValueError(
                    f"the arguments of {name}() are larger than the {self.max_message / 2**20:,.1f} MB a host call "
                    "takes: pass a slice or a summary, or split the work into several calls"
                ) from None

        host_function.__name__ = host_function.__qualname__ = name
        return host_function

    # -- talking to the parent while a cell runs ---------------------------
    def _request(self, msg: dict[str, Any], *, max_bytes: int | None = None) -> Any:
        self.chan.send(msg, default=_jsonable, max_bytes=max_bytes)
        while True:
            reply, payload = self.chan.recv()
            op = reply["op"]
            if op == "return":
                return reply.get("value")
            if op == "fd":
                return self.chan.fds.pop(0)
            if op == "raise":
                raise HostFunctionError(reply.get("message", "host function failed"))
            if op == "get":
                self.chan.send(self._op_get(reply, None))
            elif op == "set":  # a host function setting a variable (the parent waits for the answer)
                try:
                    answer = self._op_set(reply, payload)
                except BaseException as e:  # a bad payload must not end up in the cell as its own error
                    answer = _error_reply(type(e).__name__, _describe(e))
                del payload
                self.chan.send(answer)
            else:
                raise RuntimeError(f"unexpected message while waiting for the host: {op}")

    def _open_context_file(self, index: int) -> int:
        return self._request({"op": "open", "index": index})

    # -- requests ----------------------------------------------------------
    def serve(self) -> None:
        while True:
            try:
                msg, payload = self.chan.recv()
            except ChannelClosed:
                return
            handler = getattr(self, "_op_" + msg["op"], None)
            if handler is None:
                reply = _error_reply("SandboxError", f"unknown op {msg['op']!r}")
            else:
                try:
                    reply = handler(msg, payload)
                except MemoryError:
                    reply = _error_reply("MemoryError", "the sandbox memory limit was reached")
                # a bug, a bad request, or model code run outside a cell raising SystemExit:
                # report it and keep serving
                except BaseException as e:
                    reply = _error_reply(type(e).__name__, _describe(e))
            del payload  # a 100 MB context must not stay alive until the next request
            try:
                self.chan.send(reply)
            except MemoryError:
                # Encoding a large reply (a 20k-character result) can fail when the model's
                # variables fill the memory limit; a short error still fits, and the parent
                # must get an answer or it would take the worker for dead.
                self.chan.send(_error_reply("MemoryError", "the reply did not fit in the sandbox memory limit"))
            if msg["op"] == "shutdown":
                return

    def _op_ping(self, msg: dict[str, Any], payload: bytearray | None) -> dict[str, Any]:
        return {"op": "pong"}

    def _op_shutdown(self, msg: dict[str, Any], payload: bytearray | None) -> dict[str, Any]:
        return {"op": "ok"}

    def _op_register(self, msg: dict[str, Any], payload: bytearray | None) -> dict[str, Any]:
        self.host_names = list(msg["names"])
        self._install_reserved()
        return {"op": "ok"}

    def _op_reset(self, msg: dict[str, Any], payload: bytearray | None) -> dict[str, Any]:
        self._fresh_namespace()
        return {"op": "ok"}

    def _op_load_context(self, msg: dict[str, Any], payload: bytearray | None) -> dict[str, Any]:
        kind = msg["kind"]
        # Free the old context before building the new one (two large ones may not fit
        # together). Until the new one is in place no context is installed, so a failed
        # load leaves none, and the parent, told so, forgets it too.
        self.context = None
        self.has_context = False
        self.ns.pop("context", None)
        self._install_reserved()
        if kind == "none":
            pass
        elif kind == "str":
            self.context = (payload or b"").decode("utf-8", "surrogatepass")
        elif kind == "bytes":
            self.context = bytes(payload or b"")
        elif kind == "json":
            self.context = json.loads(payload or b"null")
        elif kind == "file":
            data = _read_fd_bytes(self.chan.fds.pop(0))
            try:
                # Decoding strictly costs what errors="replace" did on valid text.
                self.context = data.decode("utf-8")
            except UnicodeDecodeError as e:
                return {"op": "error", "error_type": "NotUTF8", "offset": e.start, "byte": data[e.start],
                        "message": f"NotUTF8: byte 0x{data[e.start]:02x} at offset {e.start:,} is not UTF-8 text"}
        elif kind == "dir":
            cache = int(self.limits["memory_mb"]) * 1024 * 1024 // 4
            self.context = ContextDir(msg["name"], msg["files"], self._open_context_file, cache,
                                      maker=_CONTEXT_MAKER)
        else:
            raise ValueError(f"unknown context kind {kind!r}")
        self.has_context = kind != "none"
        self._install_reserved()
        return {"op": "ok", "type": type(self.context).__name__}

    def _op_set(self, msg: dict[str, Any], payload: bytearray | None) -> dict[str, Any]:
        # The host's own data as JSON (never code); a reserved or private name stays untouched.
        name = msg["name"]
        if not isinstance(name, str) or name.startswith("_") or name in self._reserved_values:
            return _error_reply("ValueError", f"{name!r} cannot be set")
        self.ns[name] = json.loads(payload or b"null")
        return {"op": "ok"}

    def _op_get(self, msg: dict[str, Any], payload: bytearray | None) -> dict[str, Any]:
        self.reading = True
        try:
            return self._read_variable(msg)
        finally:
            self.reading = False

    def _read_variable(self, msg: dict[str, Any]) -> dict[str, Any]:
        name = msg["name"]
        if name not in self.ns or name.startswith("_"):
            return {"op": "value", "found": False}
        value = self.ns[name]
        if msg.get("as_text"):
            try:
                text = value if isinstance(value, str) else str(value)
                # a str subclass's own methods (__len__, __eq__) must not run outside a cell
                text = str.__str__(text)
            # BaseException: a model-defined __str__ (or a dict subclass's items()) may raise
            # SystemExit; outside a cell nothing else would catch it and the worker would exit.
            except BaseException as e:
                return {"op": "value", "found": True, "error": _describe(e), "type": type(value).__name__}
            return self._bounded(name, {"op": "value", "found": True, "value": text})
        try:
            encoded = json.dumps(value, default=_jsonable, ensure_ascii=False)
        except BaseException as e:
            return {"op": "value", "found": True, "error": _describe(e), "type": type(value).__name__}
        return self._bounded(name, {"op": "value", "found": True, "json": encoded})

    def _bounded(self, name: str, reply: dict[str, Any]) -> dict[str, Any]:
        """``reply`` if it fits the largest message the host accepts, else a note saying why not."""
        text = reply.get("value", reply.get("json", ""))
        # Cheap before exact: a character takes 1-4 bytes in UTF-8, 6 as a JSON escape.
        if len(text) * 6 < self.max_message or len(Channel.encode(reply)) <= self.max_message:
            return reply
        size = len(text.encode("utf-8", "surrogatepass")) / 2**20
        return {"op": "value", "found": True, "too_large": (
            f"it holds {size:,.1f} MB, more than the {self.max_message / 2**20:,.1f} MB a variable may send to "
            "the host; keep a shorter value (a summary, a slice) in it"
        )}

    def _op_exec(self, msg: dict[str, Any], payload: bytearray | None) -> dict[str, Any]:
        code = msg["code"]
        out = CappedOutput(self.max_output)
        error = error_type = None
        try:
            cell = self._compile(code)
        except SyntaxError as e:
            error_type = type(e).__name__
            error = _format_syntax_error(e)
        else:
            error_type, error = self._run(cell, code, out)
        if error is not None and len(error) > self.max_output:
            half = self.max_output // 2
            error = (f"{error[:half]}\n... [{len(error) - 2 * half:,} characters of the error not shown] ...\n"
                     f"{error[-half:]}")
        self._restore_reserved(out)
        # Only what is set: every cell's reply is encoded here and decoded by the parent,
        # which reads a missing key as no error, not truncated (and times the cell itself).
        reply: dict[str, Any] = {"op": "result", "stdout": out.getvalue()}
        if out.dropped:
            reply["truncated"] = True
        if error is not None:
            reply["error"] = error
            reply["error_type"] = error_type
        return reply

    def _compile(self, code: str) -> _policy.CompiledCell:
        cell = self.code_cache.get(code)
        if cell is None:
            # New code that differs from an earlier cell only in literal values reuses that
            # cell's policy check (see _policy.ShapeCache).
            cell = _policy.compile_cell(code, _policy.WORKER_SHAPES)
            if len(self.code_cache) >= _CODE_CACHE_SIZE:
                self.code_cache.pop(next(iter(self.code_cache)))
            self.code_cache[code] = cell
        return cell

    def _run(self, cell: _policy.CompiledCell, code: str, out: CappedOutput) -> tuple[str | None, str | None]:
        used = resource.getrusage(resource.RUSAGE_SELF)
        cpu_now = used.ru_utime + used.ru_stime
        soft = min(self.cpu_hard, int(cpu_now + self.cpu_per_exec) + 1)
        # Whole seconds: short cells in a row get the same limit, which is then still in force:
        # only this process sets it (model code cannot reach setrlimit), and the kernel raises
        # it only for a process that survives SIGXCPU, which ends the worker (no handler).
        if soft != self.cpu_soft:
            resource.setrlimit(resource.RLIMIT_CPU, (soft, self.cpu_hard))
            self.cpu_soft = soft
        saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = out
        try:
            if cell.body is not None:
                exec(cell.body, self.ns)
            if cell.last_expr is not None:
                value = eval(cell.last_expr, self.ns)
                if value is not None:
                    out.write(repr(value) + "\n")
        except BaseException as e:  # SystemExit and friends must not end the worker
            try:
                return type(e).__name__, _format_exception(e, code)
            except MemoryError:
                # The traceback's frames may still hold what filled the memory; they are
                # released when this handler ends, so report without formatting them.
                return type(e).__name__, f"{type(e).__name__} (no traceback: the sandbox memory limit was reached)"
        finally:
            # the cell's C code is done with them (see _guards._operand_keeping); released while the cell's
            # output is still in place: a kept generator's finally clause may run as it goes
            try:
                _guards.release_kept_operands()
            finally:
                sys.stdout, sys.stderr = saved
        return None, None


def _error_reply(error_type: str, message: str) -> dict[str, Any]:
    """A request failed in the worker; the worker keeps serving (its state is intact)."""
    return {"op": "error", "error_type": error_type, "message": f"{error_type}: {message}"}


def _format_syntax_error(e: SyntaxError) -> str:
    if isinstance(e, _policy.PolicyViolation):
        return f"{type(e).__name__}: {e.msg}"
    return "".join(traceback.format_exception_only(type(e), e)).rstrip()


def _format_exception(e: BaseException, code: str) -> str:
    """A traceback of the model's own code only (no worker frames)."""
    lines = code.splitlines()
    out = ["Traceback (most recent call last):"]
    previous, repeats = None, 0
    for frame in traceback.extract_tb(e.__traceback__):
        if frame.filename != _policy.FILENAME:
            continue
        key = (frame.lineno, frame.name)
        if key == previous:  # deep recursion: say how often, like Python does
            repeats += 1
            continue
        if repeats:
            out.append(f"  [previous line repeated {repeats} more times]")
        previous, repeats = key, 0
        out.append(f"  line {frame.lineno}, in {frame.name}")
        if frame.lineno and 0 < frame.lineno <= len(lines):
            out.append("    " + lines[frame.lineno - 1].strip())
    if repeats:
        out.append(f"  [previous line repeated {repeats} more times]")
    try:
        out.append("".join(traceback.format_exception_only(type(e), e)).rstrip())
    except BaseException:  # a class of the sandbox may define __str__ (raise SystemExit, ...)
        out.append(type(e).__name__)
    return "\n".join(out)


def main() -> None:
    fd, fd_for_fds = (int(x) for x in sys.argv[1].split(","))
    config = json.loads(sys.argv[2])
    import socket

    sock = socket.socket(fileno=fd)
    fd_sock = socket.socket(fileno=fd_for_fds)
    _guards.preload_modules()
    isolation = _hardening.apply(config)
    chan = Channel(sock, fd_sock=fd_sock, spin_s=float(config.get("spin_s", 0.0)))
    chan.send({"op": "ready", "isolation": isolation, "pid": os.getpid()})
    Worker(chan, config).serve()


if __name__ == "__main__":
    main()
