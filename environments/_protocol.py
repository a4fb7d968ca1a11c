"""Message framing between the parent process and a sandbox worker.

This file is imported twice: by the parent as ``loopagent.environments._protocol``
and by the worker as a top-level module (the worker runs ``python -I`` with only
this folder added to ``sys.path``), so it must depend on the standard library only.

Wire format, one frame per message::

    !II header (json length, payload length) | JSON object (UTF-8) | raw payload

The JSON part is small (commands, results); the optional raw payload carries
bulk bytes such as a 100 MB context without JSON-escaping them. File
descriptors (read-only context files) travel as SCM_RIGHTS ancillary data and
only toward the worker.

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

HEADER = struct.Struct("!II")
_CHUNK = 1 << 16
# Frames from the worker are bounded so a hostile worker cannot make the parent
# allocate without limit; the parent-side limit is set by the sandbox config.
DEFAULT_MAX_FRAME = 1 << 31


class ChannelClosed(EOFError):
    """The other side closed the connection (usually: the worker died)."""


class FrameTooLarge(ValueError):
    """A frame announced more bytes than this side accepts."""


_ENCODERS: dict[Any, json.JSONEncoder] = {}


def _dumps(obj: Any, default: Any = None) -> bytes:
    # A reused encoder saves ~1 us per message over json.dumps(**options).
    encoder = _ENCODERS.get(default)
    if encoder is None:
        encoder = _ENCODERS[default] = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=default)
    # surrogatepass: model-produced text may hold lone surrogates; keep them.
    return encoder.encode(obj).encode("utf-8", "surrogatepass")


def _loads(data: bytes | bytearray | memoryview) -> Any:
    return json.loads(bytes(data).decode("utf-8", "surrogatepass"))


class Channel:
    """A framed, bidirectional message channel over a connected AF_UNIX socket.

    ``collect_fds=True`` (worker side) reads with ``recvmsg`` so that file
    descriptors passed with SCM_RIGHTS are queued in :attr:`fds` instead of
    being dropped.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        collect_fds: bool = False,
        max_frame: int = DEFAULT_MAX_FRAME,
        spin_s: float = 0.0,
    ) -> None:
        self.sock = sock
        self.collect_fds = collect_fds
        self.max_frame = max_frame
        self.spin_s = spin_s
        self.fds: list[int] = []
        self._buf = bytearray()

    # -- sending ---------------------------------------------------------
    @staticmethod
    def encode(msg: dict[str, Any], payload_len: int = 0, default: Any = None) -> bytes:
        """Serialize a frame header and body; raises TypeError/ValueError before
        anything is sent, so a bad message never leaves half a frame behind."""
        body = _dumps(msg, default)
        return HEADER.pack(len(body), payload_len) + body

    def send(
        self,
        msg: dict[str, Any],
        payload: bytes | memoryview | None = None,
        *,
        fds: list[int] | None = None,
        default: Any = None,
    ) -> None:
        head = self.encode(msg, len(payload) if payload is not None else 0, default)
        if fds:
            socket.send_fds(self.sock, [head], fds)
        elif payload is not None and len(payload) < _CHUNK:
            self.sock.sendall(head + bytes(payload))
            return
        else:
            self.sock.sendall(head)
        if payload is not None:
            self.sock.sendall(payload)

    # -- receiving -------------------------------------------------------
    def recv(self, timeout: float | None = None) -> tuple[dict[str, Any], bytes | None]:
        """Receive one frame. Raises TimeoutError, ChannelClosed or FrameTooLarge."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        head = self._read_exact(HEADER.size, deadline)
        jlen, plen = HEADER.unpack(head)
        if jlen + plen > self.max_frame:
            raise FrameTooLarge(f"frame of {jlen + plen} bytes exceeds the limit of {self.max_frame}")
        msg = _loads(self._read_exact(jlen, deadline))
        if not isinstance(msg, dict) or "op" not in msg:
            raise ValueError("malformed message: expected a JSON object with an 'op' field")
        payload = bytes(self._read_exact(plen, deadline)) if plen else None
        return msg, payload

    def _read_exact(self, n: int, deadline: float | None) -> bytearray:
        if len(self._buf) >= n:
            out = self._buf[:n]
            del self._buf[:n]
            return out
        if n >= _CHUNK:
            # Large payload: receive straight into its final buffer, never reading
            # past it (a following frame may carry file descriptors).
            out = bytearray(n)
            have = len(self._buf)
            out[:have] = self._buf
            self._buf.clear()
            view = memoryview(out)
            while have < n:
                self._wait_readable(deadline)
                got = self.sock.recv_into(view[have:], n - have)
                if got == 0:
                    raise ChannelClosed("connection closed")
                have += got
            return out
        while len(self._buf) < n:
            self._fill(deadline)
        out = self._buf[:n]
        del self._buf[:n]
        return out

    def _recv_some(self, flags: int) -> bytes:
        if self.collect_fds:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, _CHUNK, 16, flags)
            self.fds.extend(fds)
            return data
        return self.sock.recv(_CHUNK, flags)

    def _fill(self, deadline: float | None) -> None:
        if self.spin_s > 0:
            # Poll with a 1-byte peek (recvmsg per poll is several times slower),
            # then read what is there in one call.
            spin_end = time.perf_counter() + self.spin_s
            while True:
                try:
                    self.sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK)
                    break
                except BlockingIOError:
                    if time.perf_counter() >= spin_end:
                        self._wait_readable(deadline)
                        break
        else:
            self._wait_readable(deadline)
        self._take(self._recv_some(0))

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
