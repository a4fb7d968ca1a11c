"""One exception hierarchy: every error loopagent raises on purpose is a LoopagentError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import loopagent
from loopagent import LoopagentError

# Raised inside the sandbox worker to model code (it cannot import loopagent), and the
# private wire protocol's own signals.
_MODEL_SIDE = ("._worker", "._policy", "._guards", "._protocol", "._hardening")


def _public_modules() -> list[str]:
    names = []
    # the sibling folders are mapped into loopagent, so each is walked from its own path
    for package in ("loopagent", "loopagent.backends", "loopagent.environments", "loopagent.evals"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            if not any(part.startswith("_") for part in info.name.split(".")):
                names.append(info.name)
    return names


def _exception_classes() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in _public_modules():
        try:
            module = importlib.import_module(name)
        except ImportError as e:  # an optional extra that is not installed
            pytest.skip(f"{name} needs an optional dependency: {e}")
        for attr, value in vars(module).items():
            if (inspect.isclass(value) and issubclass(value, BaseException) and not attr.startswith("_")
                    and value.__module__.startswith("loopagent") and not value.__module__.endswith(_MODEL_SIDE)):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return list(found.values())


def test_every_public_exception_is_a_loopagent_error() -> None:
    classes = _exception_classes()
    assert len(classes) >= 15  # the walk found the package's errors, not nothing
    outside = sorted(f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, LoopagentError))
    assert outside == [], f"exceptions outside the LoopagentError hierarchy: {outside}"


def test_builtin_bases_stay_catchable() -> None:
    from loopagent.environments import ContextNotFoundError, ContextTooLargeError, UnsupportedContextError
    from loopagent.trajectory import TrajectoryError

    assert issubclass(ContextNotFoundError, FileNotFoundError)
    assert issubclass(ContextTooLargeError, ValueError)
    assert issubclass(UnsupportedContextError, TypeError)
    assert issubclass(TrajectoryError, ValueError)
    assert issubclass(loopagent.ConfigError, ValueError)
