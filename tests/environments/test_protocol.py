"""The message encoding's fast paths give what the plain json calls give.

``_protocol._dumps`` writes flat objects of str, bool, int and None itself, and ``_loads``
reads a frame that is one JSON value with the scanner alone; both must be the
json module's own answer, bytes and errors included (the parent parses what an
untrusted worker sends).
"""

from __future__ import annotations

import enum
import json
from typing import Any

import pytest

from loopagent.environments import _protocol

_REFERENCE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class Colour(enum.IntEnum):
    RED = 1


class Text(str):
    pass


MESSAGES: list[Any] = [
    {"op": "exec", "code": "x = 1\nprint('é \u2028 \"q\" \\\\ \t \x00 \U0001f600')"},
    {"op": "exec", "code": "lone \ud800 surrogate"},
    {"op": "result", "stdout": "", "truncated": True, "error": "E: x", "error_type": "E"},
    {"op": "get", "name": "x", "as_text": False},
    {"op": "open", "index": 3},
    {"big": 2**80, "neg": -5, "t": True, "f": False, "n": None},
    {},
    # not flat or not plain: the encoder's own path
    {"op": "call", "name": "f", "args": [1, [2, {"a": 3}]], "kwargs": {}},
    {"op": "return", "value": 1.5},
    {"e": Colour.RED, "s": Text("sub")},
    {1: "int key"},
    [1, 2],
]


@pytest.mark.parametrize("msg", MESSAGES, ids=range(len(MESSAGES)))
def test_dumps_writes_the_bytes_of_the_json_encoder(msg: Any) -> None:
    data = _protocol._dumps(msg)
    assert data == _REFERENCE.encode(msg).encode("utf-8", "surrogatepass")
    assert _protocol._loads(data) == json.loads(data.decode("utf-8", "surrogatepass"))


def _outcome(fn: Any, data: bytes) -> Any:
    try:
        return "ok", fn(data)
    except Exception as e:
        return type(e).__name__, str(e)


def _reference_loads(data: bytes) -> Any:
    try:
        return json.loads(bytes(data).decode("utf-8", "surrogatepass"))
    except RecursionError:
        raise ValueError("message nested too deeply") from None


FRAMES = [b"{}", b' {"op":"x"}', b'{"op":"x"} ', b"", b" ", b"{", b"\xef\xbb\xbf{}", b"[1,2]x", b"{}{}",
          b"NaN", b"-Infinity", b'"s"', b"1e400", b'{"a":1,"a":2}', b'"\\ud800"', b"[" * 100_000,
          b'{"op": "result", "stdout": "\\u00e9"}']


@pytest.mark.parametrize("data", FRAMES, ids=range(len(FRAMES)))
def test_loads_answers_like_json_loads(data: bytes) -> None:
    assert _outcome(_protocol._loads, data) == _outcome(_reference_loads, data)
