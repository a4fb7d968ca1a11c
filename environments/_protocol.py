"""Message framing between the parent process and a sandbox worker.

This file is imported twice: by the parent as ``loopagent.environments._protocol``
and by the worker as a top-level module (the worker runs ``python -I`` with only
this folder added to ``sys.path``), so it must depend on the standard library only.

Wire format, one frame per message::

    !III header (json length, payload length, fd count) | JSON object (UTF-8) | raw payload

The JSON part is small (commands, results); the optional raw payload carries
bulk bytes such as a 100 MB context without JSON-escaping them. File
descriptors (read-only context files, only toward the worker) travel as
SCM_RIGHTS on a second socket, sent before their frame; the header's fd count
tells the receiver to collect them. Keeping ancillary data off the main socket
lets both sides read it with plain ``recv`` (``recvmsg`` per read is slower).

Security note: the worker runs untrusted code, so the parent only ever *parses
JSON* from it (never pickle), and checks frame sizes before allocating.

Latency note: waiting parties spin on non-blocking reads for a short window
before blocking. On small VMs a blocking wake-up costs ~60 us per hop, which
would dominate a trivial exec round trip; the spin keeps it at a few us and is
bounded, so an idle worker costs nothing.
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import time
from typing import Any

HEADER = struct.Struct("!III")
_CHUNK = 1 << 16
_BIG_CHUNK = 1 << 20
# Frames from the worker are bounded so a hostile worker cannot make the parent
# allocate without limit; the parent-side limit is set by the sandbox config.
DEFAULT_MAX_FRAME = 1 << 31


class ChannelClosed(EOFError):
    """The other side closed the connection (usually: the worker died)."""


class FrameTooLarge(ValueError):
    """A frame announced more bytes than this side accepts."""


_ENCODERS: dict[Any, json.JSONEncoder] = {}
# The string encoder JSONEncoder(ensure_ascii=False) uses (the C one where there is one).
_encode_str = json.encoder.encode_basestring
_SCALARS = {type(None): lambda v: "null", bool: lambda v: "true" if v else "false", int: int.__repr__,
            str: _encode_str}
_DECODER = json.JSONDecoder()


def _dumps(obj: Any, default: Any = None) -> bytes:
    # Most messages (an exec request, its result, a ping) are flat objects of plain str,
    # bool and None: written directly, the bytes JSONEncoder would write, without its
    # per-call setup, which is most of the cost of a small message.
    if type(obj) is dict:
        parts = []
        for key, value in obj.items():
            write = _SCALARS.get(type(value))
            if write is None or type(key) is not str:
                break
            parts.append(f"{_encode_str(key)}:{write(value)}")
        else:
            return ("{" + ",".join(parts) + "}").encode("utf-8", "surrogatepass")
    # A reused encoder saves ~1 us per message over json.dumps(**options).
    encoder = _ENCODERS.get(default)
    if encoder is None:
        encoder = _ENCODERS[default] = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=default)
    # surrogatepass: model-produced text may hold lone surrogates; keep them.
    return encoder.encode(obj).encode("utf-8", "surrogatepass")


def _loads(data: bytes | bytearray | memoryview) -> Any:
    text = bytes(data).decode("utf-8", "surrogatepass")
    try:
        # What json.loads does for a text that is one JSON value and nothing else (all that
        # _dumps writes), without its checks around it; anything else (white space around
        # the value, a BOM, no value, bad JSON) goes to json.loads for its answer or error.
        try:
            value, end = _DECODER.scan_once(text, 0)
        except (StopIteration, json.JSONDecodeError):
            end = -1
        if end == len(text):
            return value
        return json.loads(text)
    except RecursionError:
        raise ValueError("message nested too deeply") from None


class Channel:
    """A framed, bidirectional message channel over a connected AF_UNIX socket,
    with an optional second socket ``fd_sock`` for passing file descriptors."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        fd_sock: socket.socket | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        spin_s: float = 0.0,
    ) -> None:
        self.sock = sock
        self.fd_sock = fd_sock
        self.max_frame = max_frame
        self.spin_s = spin_s
        #: Descriptors received with the last frames, oldest first.
        self.fds: list[int] = []
        self._buf = bytearray()

    # -- sending ---------------------------------------------------------
    @staticmethod
    def encode(msg: dict[str, Any], payload_len: int = 0, nfds: int = 0, default: Any = None) -> bytes:
        """Serialize a frame header and body; raises TypeError/ValueError before
        anything is sent, so a bad message never leaves half a frame behind."""
        body = _dumps(msg, default)
        return HEADER.pack(len(body), payload_len, nfds) + body

    def send(
        self,
        msg: dict[str, Any],
        payload: bytes | memoryview | None = None,
        *,
        fds: list[int] | None = None,
        default: Any = None,
        max_bytes: int | None = None,
    ) -> None:
        """Send one frame; with ``max_bytes``, a larger message raises :class:`FrameTooLarge`
        before anything is sent."""
        plen = len(payload) if payload is not None else 0
        head = self.encode(msg, plen, len(fds or ()), default)
        if max_bytes is not None and len(head) + plen > max_bytes:
            raise FrameTooLarge(f"a message of {len(head) + plen:,} bytes exceeds the limit of {max_bytes:,}")
        if fds:
            if self.fd_sock is None:
                raise ValueError("this channel has no socket for file descriptors")
            socket.send_fds(self.fd_sock, [b"F"], fds)
        if payload is not None and plen < _CHUNK:
            self.sock.sendall(head + bytes(payload))
            return
        self.sock.sendall(head)
        if payload is not None:
            self.sock.sendall(payload)

    # -- receiving -------------------------------------------------------
    def recv(self, timeout: float | None = None) -> tuple[dict[str, Any], bytearray | None]:
        """Receive one frame. Raises TimeoutError, ChannelClosed or FrameTooLarge."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        buf = self._buf
        while len(buf) < HEADER.size:
            self._fill(deadline)
        jlen, plen, nfds = HEADER.unpack_from(buf)
        if jlen + plen > self.max_frame or nfds > 16:
            raise FrameTooLarge(f"frame of {jlen + plen} bytes / {nfds} fds exceeds the limits of this channel")
        end = HEADER.size + jlen
        while len(buf) < end:
            self._fill(deadline)
        msg = _loads(buf[HEADER.size:end])
        del buf[:end]
        if not isinstance(msg, dict) or "op" not in msg:
            raise ValueError("malformed message: expected a JSON object with an 'op' field")
        payload = self._read_exact(plen, deadline) if plen else None
        if nfds:
            if self.fd_sock is None:
                raise ValueError("received file descriptors on a channel without an fd socket")
            _data, fds, _flags, _addr = socket.recv_fds(self.fd_sock, 1, nfds)
            self.fds.extend(fds)
        return msg, payload

    def _read_exact(self, n: int, deadline: float | None) -> bytearray:
        if len(self._buf) >= n:
            out = self._buf[:n]
            del self._buf[:n]
            return out
        # Grow with the data actually received (a forged header must not make the
        # parent allocate memory up front), never reading past the frame.
        out = self._buf
        self._buf = bytearray()
        while len(out) < n:
            self._wait_readable(deadline)
            chunk = self.sock.recv(min(_BIG_CHUNK, n - len(out)))
            if not chunk:
                raise ChannelClosed("connection closed")
            out += chunk
        return out

    def _fill(self, deadline: float | None) -> None:
        if self.spin_s > 0:
            spin_end = time.perf_counter() + self.spin_s
            while True:
                try:
                    self._take(self.sock.recv(_CHUNK, socket.MSG_DONTWAIT))
                    return
                except BlockingIOError:
                    if time.perf_counter() >= spin_end:
                        break
        self._wait_readable(deadline)
        self._take(self.sock.recv(_CHUNK))

    def _take(self, data: bytes) -> None:
        if not data:
            raise ChannelClosed("connection closed")
        self._buf += data

    def _wait_readable(self, deadline: float | None) -> None:
        if deadline is None:
            return
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise TimeoutError("timed out waiting for a message")
        ready, _, _ = select.select([self.sock], [], [], remaining)
        if not ready:
            raise TimeoutError("timed out waiting for a message")

    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()
        self.sock.close()
        if self.fd_sock is not None:
            self.fd_sock.close()
