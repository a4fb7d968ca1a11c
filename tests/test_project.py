"""The project's own promises: the README's commands are what CI runs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _command_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("python3 -m venv")]


def test_ci_runs_exactly_the_readme_test_command():
    readme = _command_lines((ROOT / "README.md").read_text())
    ci = _command_lines((ROOT / ".ci" / "run").read_text())
    assert len(readme) == 2, "the README starts with two commands: install + main job, install + tests"
    assert ci == [readme[1]]
    assert readme[1].endswith("&& ruff check . && pytest -q")  # lint first, then the tests


def test_one_importable_top_level_name():
    import loopagent.backends
    import loopagent.environments
    import loopagent.evals

    for module in (loopagent.backends, loopagent.environments, loopagent.evals):
        assert module.__name__.startswith("loopagent.")
