"""Contexts on their way into the sandbox: what the parent checks before sending one.

A context is refused here, before anything reaches the worker, when it is of a type the
sandbox cannot hold, too large for its memory limit, not JSON-like (or nested too deep),
or a path that does not exist; a file is handed over as a read-only descriptor the
worker reads itself, never through the parent.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from .base import ContextLike, ContextNotFoundError, ContextTooLargeError, UnsupportedContextError, list_files

MAX_DIR_FILES = 200_000
# Lists and dicts inside each other, at most: json (parent and worker) and the model's own
# recursive code stay far from Python's recursion limit (1000), and real data is rarely
# deeper than a few dozen levels. Host-call arguments have the same limit (_worker).
MAX_CONTEXT_NESTING = 100
SUPPORTED = "str, bytes, list (of str or JSON-like values), dict (JSON-like), or a pathlib.Path to a file or directory"
_CONTAINERS = (list, tuple, dict)


class PreparedContext(BaseModel):
    """A context prepared for transfer (kept only while it is being sent)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    kind: str
    payload: bytes | None = None
    path: Path | None = None
    files: list[tuple[str, int]] = []
    description: str = ""


def prepare_context(context: ContextLike, *, limit: int, memory_mb: int) -> PreparedContext:
    """Check ``context`` and make it ready to send (nothing is read from a path here)."""
    if context is None:
        return PreparedContext(kind="none")
    if isinstance(context, str):
        data = context.encode("utf-8", "surrogatepass")
        kind = "str"
    elif isinstance(context, (bytes, bytearray, memoryview)):
        data, kind = bytes(context), "bytes"
    elif isinstance(context, (list, tuple, dict)):
        _check_json_like(context)
        try:
            data = json.dumps(context, ensure_ascii=False).encode("utf-8", "surrogatepass")
        except (TypeError, ValueError) as e:
            raise UnsupportedContextError(
                f"a {type(context).__name__} context must hold only JSON-like values "
                f"(str, int, float, bool, None, list, dict with str keys): {e}"
            ) from None
        kind = "json"
    elif isinstance(context, os.PathLike):
        return _prepare_path(Path(context), limit, memory_mb)
    else:
        raise UnsupportedContextError(f"unsupported context type {type(context).__name__}; supported: {SUPPORTED}")
    if len(data) > limit:
        raise ContextTooLargeError(too_large(len(data), limit, memory_mb))
    return PreparedContext(kind=kind, payload=data)

def too_large(size: int, limit: int, memory_mb: int) -> str:
    return (
        f"the context is {size / 2**20:,.1f} MB but this sandbox accepts at most {limit / 2**20:,.1f} MB "
        f"(memory limit {memory_mb} MB); raise SandboxLimits(memory_mb=..., max_context_mb=...) "
        "or pass a directory as a pathlib.Path so files are read one at a time"
    )

def _prepare_path(path: Path, limit: int, memory_mb: int) -> PreparedContext:
    try:
        st = path.stat()  # follows symlinks: the user named this path on purpose
    except (FileNotFoundError, NotADirectoryError):
        raise ContextNotFoundError(
            f"context path {str(path)!r} does not exist; pass an existing file or directory"
        ) from None
    except OSError as e:
        raise UnsupportedContextError(
            f"context path {str(path)!r} cannot be read ({e.strerror or e}); pass a file or directory this "
            "process can read"
        ) from None
    if stat.S_ISREG(st.st_mode):
        if st.st_size > limit:
            raise ContextTooLargeError(too_large(st.st_size, limit, memory_mb))
        # Resolved: the descriptor handed to the worker is opened without following links.
        return PreparedContext(kind="file", path=path.resolve(), description=str(path))
    if not stat.S_ISDIR(st.st_mode):
        raise UnsupportedContextError(f"context path {str(path)!r} is neither a regular file nor a directory")
    root = path.resolve()
    files = list_files(root, limit=MAX_DIR_FILES)
    return PreparedContext(kind="dir", path=root, files=files, description=str(path))


def open_readonly(path: Path, *, limit: int, memory_mb: int) -> int:
    """A read-only descriptor of the regular file ``path`` within the context size limit.

    O_NOFOLLOW: a symlink planted in a context directory must not lead outside it;
    O_NONBLOCK: a FIFO swapped in after the listing must not hang the parent.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ContextNotFoundError(f"{str(path)!r} does not exist (any more)") from None
    except OSError as e:
        raise UnsupportedContextError(f"{str(path)!r} cannot be opened for reading ({e.strerror or e})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnsupportedContextError(f"{str(path)!r} is not a regular file")
    if st.st_size > limit:
        os.close(fd)
        raise ContextTooLargeError(too_large(st.st_size, limit, memory_mb))
    os.set_blocking(fd, True)
    return fd


def _check_json_like(context: list | tuple | dict) -> None:
    """Refuse, before anything is sent, what json would choke on or change: nesting deeper
    than MAX_CONTEXT_NESTING (a RecursionError otherwise), reference cycles, and dict keys
    that are not str (json silently turns 1 into "1"). Iterative, level by level, with the
    per-item work in comprehensions: about as fast as json.dumps itself."""
    kind = type(context).__name__
    frontier: list[Any] = [context]
    depth = 0
    while frontier:
        depth += 1
        if depth > MAX_CONTEXT_NESTING:
            _refuse_deep(context, kind)
        deeper: list[Any] = []
        for item in frontier:
            if isinstance(item, dict):
                if not set(map(type, item)) <= {str}:
                    for key in item:
                        if not isinstance(key, str):
                            raise UnsupportedContextError(
                                f"the {kind} context has a dict key {key!r} of type {type(key).__name__}: keys "
                                "must be str (JSON would silently turn it into a str, so lookups by the original "
                                "key would fail)"
                            )
                deeper += [v for v in item.values() if isinstance(v, _CONTAINERS)]
            else:
                deeper += [v for v in item if isinstance(v, _CONTAINERS)]
        frontier = deeper


def _refuse_deep(context: Any, kind: str) -> None:
    """Too deep: say whether it is a reference cycle (a depth-first walk that keeps each
    value's ancestors; only run on data being refused anyway)."""
    stack: list[tuple[Any, int, tuple[Any, ...] | None]] = [(context, 1, None)]
    while stack:
        item, depth, chain = stack.pop()
        if depth > MAX_CONTEXT_NESTING:
            ids, link = {id(item)}, chain
            while link is not None:
                if link[0] in ids:
                    raise UnsupportedContextError(
                        f"the {kind} context contains a reference cycle (a list or dict inside itself), "
                        "which JSON-like data cannot hold; pass a copy without the cycle"
                    )
                ids.add(link[0])
                link = link[1]
            break
        chain = (id(item), chain)
        values = item.values() if isinstance(item, dict) else item
        stack.extend((v, depth + 1, chain) for v in values if isinstance(v, _CONTAINERS))
    raise UnsupportedContextError(
        f"the {kind} context is nested more than {MAX_CONTEXT_NESTING} levels deep (lists and dicts inside "
        "each other), more than the sandbox accepts; flatten it, or pass it as a str (e.g. json.dumps(...)) "
        "and parse it in the REPL"
    )
