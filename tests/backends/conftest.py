"""Fixtures for backend tests: a local OpenAI-compatible server (see openai_server.py)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Loaded by path: under --import-mode=importlib this folder is not on sys.path.
_NAME = "_loopagent_tests_openai_server"
if _NAME not in sys.modules:
    _spec = importlib.util.spec_from_file_location(_NAME, Path(__file__).with_name("openai_server.py"))
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_NAME] = _module  # dataclasses look their module up while the file runs
    _spec.loader.exec_module(_module)
FakeOpenAIServer = sys.modules[_NAME].FakeOpenAIServer


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    """A fresh OpenAI-compatible server on 127.0.0.1 (model id "tiny-looped"), stopped after the test."""
    fake = FakeOpenAIServer(model_id="tiny-looped")
    try:
        yield fake
    finally:
        fake.close()
        assert not fake.running, "the fake server's thread did not stop"


@pytest.fixture
def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
