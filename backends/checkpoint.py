"""Reading a looped checkpoint's configuration (the hf: and vllm: backends, ``loopagent serve``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loopagent.errors import ModelSpecError


def looped_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """``config.json`` of a :class:`LoopedForCausalLM` checkpoint, or a ModelSpecError
    saying what is wrong (no checkpoint, bad JSON, not a looped model).

    Example::

        looped_checkpoint_config("ckpt/")["max_loops"]   # 16
    """
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelSpecError(f"{str(path)!r} is not a checkpoint directory (no config.json)")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ModelSpecError(f"{config_file}: invalid JSON ({e.msg}, line {e.lineno})") from None
    if config.get("model_type") != "looped":
        raise ModelSpecError(
            f"{str(path)!r} holds a {config.get('model_type')!r} model, not a looped one; convert it with "
            "`loopagent convert retrofit|ouro|huginn SRC DST` first"
        )
    return config
