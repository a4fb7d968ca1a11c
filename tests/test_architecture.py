"""The layering of the source tree, checked from its import statements.

Layers, lowest first; a module may import its own layer and the ones below it:

| layer        | modules                                                            |
|--------------|--------------------------------------------------------------------|
| foundation   | loopagent.errors, loopagent.aio, loopagent.validation, loopagent.tokens |
| environments | loopagent.environments.* (knows no models, controller or benchmarks) |
| backends     | loopagent.backends.* (knows no environments, controller or benchmarks) |
| controller   | the rest of loopagent.* (rlm, policies, prompts, trajectory, ...)  |
| evals        | loopagent.evals.*                                                  |
| training     | loopagent.training.* (the pipeline that makes the embedded weights) |
| apps         | loopagent (its public API), loopagent.cli, loopagent.demo          |

environments and backends are siblings: neither imports the other. Besides the
layers, no module imports a private (underscored) name or module of another
package (a package is one folder: ``loopagent.backends.vllm`` is not
``loopagent.backends.looped``).
"""

from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FOUNDATION = frozenset({"loopagent.errors", "loopagent.aio", "loopagent.validation", "loopagent.tokens"})
APPS = frozenset({"loopagent", "loopagent.cli", "loopagent.demo", "loopagent.view", "loopagent.view.load",
                  "loopagent.view.highlight", "loopagent.view.model", "loopagent.view.page", "loopagent.view.render",
                  "loopagent.view.index", "loopagent.view.server"})
_RANK = {"foundation": 0, "environments": 1, "backends": 1, "controller": 2, "evals": 3, "training": 4, "apps": 5}
# The sandbox worker's own modules run with only their folder on sys.path.
_WORKER_SIDE = frozenset({"_worker", "_policy", "_guards", "_protocol", "_hardening"})


def layer(module: str) -> str | None:
    """The layer of a loopagent module, None for anything outside loopagent."""
    if module in FOUNDATION:
        return "foundation"
    if module in APPS:
        return "apps"
    for name in ("environments", "backends", "evals", "training"):
        prefix = f"loopagent.{name}"
        if module == prefix or module.startswith(prefix + "."):
            return name
    if module.startswith("loopagent."):
        return "controller"
    return None


def allowed(importer: str, imported: str) -> bool:
    """Whether module ``importer`` may import module ``imported`` under the layer rule."""
    a, b = layer(importer), layer(imported)
    if a is None or b is None or a == b:
        return True
    if {a, b} == {"environments", "backends"}:
        return False
    return _RANK[b] < _RANK[a]


@dataclass(frozen=True)
class Import:
    """One imported module (and the name taken from it, for ``from m import name``)."""

    importer: str
    module: str
    name: str | None
    line: int


def package_map(root: Path) -> dict[str, Path]:
    """Importable package name -> folder, from pyproject's setuptools package-dir."""
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {name: root / folder for name, folder in config["package-dir"].items()}


def modules(root: Path) -> dict[str, Path]:
    """Every module of the installed packages: dotted name -> file."""
    found: dict[str, Path] = {}
    packages = package_map(root)
    for package, folder in packages.items():
        for path in sorted(folder.glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            found[name] = path
    return found


def _package_of(module: str, is_package: bool) -> str:
    return module if is_package else module.rpartition(".")[0]


def imports(module: str, path: Path, known: dict[str, Path]) -> list[Import]:
    """Every import in ``path`` (top level and inside functions), resolved to module names."""
    is_package = path.stem == "__init__"
    here = _package_of(module, is_package)
    found: list[Import] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [Import(module, alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in known:  # `from package import module`
                    found.append(Import(module, sub, None, node.lineno))
                else:
                    found.append(Import(module, source, alias.name, node.lineno))
    return found


def private_access(module: str, path: Path, known: dict[str, Path]) -> list[str]:
    """``alias._name`` attribute reads where ``alias`` is a loopagent module of another package."""
    is_package = path.stem == "__init__"
    here = _package_of(module, is_package)
    tree = ast.parse(path.read_text(), str(path))
    aliases: dict[str, str] = {}
    for imp_node in ast.walk(tree):
        if isinstance(imp_node, ast.ImportFrom) and not imp_node.level and imp_node.module:
            for alias in imp_node.names:
                sub = f"{imp_node.module}.{alias.name}"
                if sub in known:
                    aliases[alias.asname or alias.name] = sub
        elif isinstance(imp_node, ast.Import):
            for alias in imp_node.names:
                if alias.asname and alias.name in known:
                    aliases[alias.asname] = alias.name
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            target = aliases[node.value.id]
            target_pkg = _package_of(target, known[target].stem == "__init__")
            if _is_private(node.attr) and target_pkg != here:
                problems.append(f"{module}:{node.lineno} reads {target}.{node.attr}")
    return problems


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def violations(root: Path) -> list[str]:
    """Every broken rule in the tree at ``root``, as readable lines."""
    known = modules(root)
    problems: list[str] = []
    for module, path in known.items():
        if module.rpartition(".")[2] in _WORKER_SIDE:
            continue
        here = _package_of(module, path.stem == "__init__")
        for imp in imports(module, path, known):
            if not imp.module.startswith("loopagent"):
                continue
            where = f"{module}:{imp.line}"
            target = imp.module
            if not allowed(module, target):
                problems.append(f"{where} ({layer(module)}) imports {target} ({layer(target)})")
            target_pkg = _package_of(target, target in known and known[target].stem == "__init__")
            parts = target.split(".")
            if target_pkg != here and any(_is_private(p) for p in parts):
                problems.append(f"{where} imports the private module {target}")
            elif imp.name and _is_private(imp.name) and target_pkg != here:
                problems.append(f"{where} imports the private name {target}.{imp.name}")
        problems += private_access(module, path, known)
    return list(dict.fromkeys(problems))  # `from m import a, b` breaks a rule once


def test_the_tree_keeps_its_layers() -> None:
    problems = violations(ROOT)
    assert not problems, "layer or privacy rule broken:\n" + "\n".join(problems)


def test_every_module_is_in_a_layer() -> None:
    known = modules(ROOT)
    assert {"loopagent.rlm", "loopagent.backends.base", "loopagent.environments.sandbox"} <= set(known)
    assert all(layer(m) is not None for m in known)


# -- the checker itself catches what it should --------------------------------------------------
def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    (tmp_path / "pyproject.toml").write_text(
        "[tool.setuptools.package-dir]\n"
        '"loopagent" = "loopagent"\n"loopagent.backends" = "backends"\n"loopagent.backends.vllm" = "backends/vllm"\n'
        '"loopagent.environments" = "environments"\n"loopagent.evals" = "evals"\n'
    )
    for rel, text in {"loopagent/__init__.py": "", "loopagent/errors.py": "", "loopagent/rlm.py": "",
                      "backends/__init__.py": "", "backends/vllm/__init__.py": "", "environments/__init__.py": "",
                      "evals/__init__.py": "", **files}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"environments/repl.py": "from loopagent.backends.base import Backend\n"}, "imports loopagent.backends.base"),
        ({"environments/repl.py": "def f():\n    import loopagent.evals.runner\n"}, "imports loopagent.evals.runner"),
        ({"backends/hf.py": "from loopagent import rlm\n"}, "(backends) imports loopagent.rlm (controller)"),
        ({"backends/hf.py": "from loopagent import RLM\n"}, "(backends) imports loopagent (apps)"),
        ({"backends/hf.py": "from loopagent.evals.base import Task\n"}, "imports loopagent.evals.base (evals)"),
        ({"loopagent/rlm.py": "from loopagent.evals import runner\n"}, "(controller) imports loopagent.evals (evals)"),
        ({"backends/vllm/model.py": "from loopagent.backends.base import _helper\n"}, "private name"),
        ({"backends/base.py": "", "backends/vllm/model.py": "from loopagent.backends import base\nx = base._helper\n"},
         "reads loopagent.backends.base._helper"),
        ({"evals/runner.py": "from loopagent._aio import run_sync\n"}, "private module loopagent._aio"),
    ],
)
def test_the_checker_finds_a_broken_rule(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    problems = violations(_tree(tmp_path, files))
    assert any(expected in p for p in problems), problems


def test_the_checker_lets_allowed_imports_through(tmp_path: Path) -> None:
    files = {
        "backends/base.py": "from loopagent.errors import BackendError\n",
        "backends/hf.py": "from .base import _helper\nfrom loopagent.backends import base\nx = base._helper\n",
        "environments/sandbox.py": "from ._protocol import Channel\nfrom loopagent.errors import LoopagentError\n",
        "loopagent/rlm.py": ("from loopagent.backends.base import Backend\n"
                             "from loopagent.environments import SandboxREPL\n"),
        "evals/runner.py": "from loopagent.rlm import RLM\nfrom loopagent.backends import base\nx = base.__name__\n",
    }
    assert violations(_tree(tmp_path, files)) == []
