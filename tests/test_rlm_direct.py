"""RLM.arun_direct: one root call without a REPL, through the controller's call, limits and logs."""

from __future__ import annotations

from pathlib import Path

import pytest

from loopagent import RLM, ConfigError
from loopagent.backends.scripted import ScriptedBackend
from loopagent.errors import BackendError
from loopagent.trajectory import read_trajectory


def test_direct_run_answers_from_one_call_and_logs_a_run(tmp_path: Path):
    root = ScriptedBackend(["The answer:\n```python\nx = 1\n```\nFINAL('42')"], name="root", looped=True,
                           default_loops=2, max_loops=4)
    rlm = RLM(root, log_dir=tmp_path)
    result = rlm.run_direct("What?", "Document: ... What?", context="a long text", loops=3)
    assert (result.answer, result.finished, result.reason, result.iterations) == ("42", True, "final", 1)
    assert result.usage.total.calls == 1 and result.usage.total.loop_tokens > 0
    assert root.calls[0]["messages"] == [{"role": "user", "content": "Document: ... What?"}]
    assert root.calls[0]["loops"] == 3
    events = read_trajectory(result.trajectory)
    assert [e.type for e in events] == ["run_start", "root_turn", "final", "run_end"]
    assert events[0].context == {"type": "str", "chars": 11} and events[0].config == rlm.config()
    assert events[1].loops_chosen == 3 and events[2].source == "text" and events[3].answer == "42"


def test_direct_run_without_final_takes_the_prose_and_maps_errors(tmp_path: Path):
    plain = RLM(ScriptedBackend(["  Paris  "]), log_dir=tmp_path)
    assert plain.run_direct("Where?", "Where?", log_config={"baseline": "x"}).answer == "Paris"

    def fail(messages, loops):
        raise BackendError("down")

    result = RLM(ScriptedBackend(fail), log_dir=tmp_path).run_direct("Where?", "Where?")
    assert (result.answer, result.finished, result.reason, result.detail) == (None, False, "model_error", "down")
    assert [e.type for e in read_trajectory(result.trajectory)] == ["run_start", "limit", "run_end"]

    slow = RLM(ScriptedBackend(["late"], latency_s=1.0), budget={"timeout_s": 0.2})
    assert slow.run_direct("Where?", "Where?").reason == "timeout"
    with pytest.raises(ConfigError, match="prompt"):
        plain.run_direct("Where?", "  ")
