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


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny gated looped checkpoint with the byte tokenizer (hidden 32, loops 3 of at most 8).
    Needs torch and transformers (imported here, so the fixture's users skip without them)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from loopagent.backends.looped import LoopedConfig, LoopedForCausalLM
    from loopagent.backends.looped.tokenizer import byte_tokenizer

    path = tmp_path_factory.mktemp("looped")
    tok = byte_tokenizer()
    torch.manual_seed(0)
    config = LoopedConfig(vocab_size=len(tok), hidden_size=32, num_attention_heads=4, intermediate_size=64,
                          default_loops=3, max_loops=8, exit_gate=True, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)
    LoopedForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path
