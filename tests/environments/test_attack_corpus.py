"""Attack corpus: sandbox-escape attempts from public sources, all of which must be contained.

The snippets (``corpus/attacks/attacks.jsonl``, sources in the README there) are
escape techniques from smolagents' executor security tests, classic pyjail write-ups
and RestrictedPython's tests of forbidden things, each finished with a payload that
prints what only an escape could obtain. "Contained" means, for every attack:

- none of the markers reaches the cell's output (stdout or error text): the value of
  ``LOOPAGENT_CANARY``, set in this (parent) process's environment; the content of a
  canary file the parent wrote (its path is put in for ``__CANARY_FILE__``); this
  host's ``/etc/hostname`` (when long enough to be unambiguous); and ``ESCAPED``,
  which the attacks print (built as ``"ESC" + "APED"``) only after the dangerous step;
- the canary file is unchanged, and the worker still answers ``print(1 + 1)`` with
  ``2`` (after a clean restart if the attack killed it).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loopagent.environments import SandboxREPL, _policy

CORPUS = Path(__file__).parent / "corpus" / "attacks" / "attacks.jsonl"
CANARY_ENV = "LOOPAGENT_CANARY"
MARK = "ESCAPED"
ATTACKS = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def markers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    env_value = f"canary-env-{uuid.uuid4().hex}"
    file_value = f"canary-file-{uuid.uuid4().hex}"
    path = tmp_path_factory.mktemp("attack-canary") / "canary.txt"
    path.write_text(file_value)
    path.chmod(0o644)  # readable by anyone: only the sandbox's confinement keeps it out
    old = os.environ.get(CANARY_ENV)
    os.environ[CANARY_ENV] = env_value  # set before any worker starts
    try:
        hostname = Path("/etc/hostname").read_text().strip()
    except OSError:
        hostname = ""
    values = [env_value, file_value, MARK] + ([hostname] if len(hostname) >= 8 else [])
    try:
        yield {"path": str(path), "file_value": file_value, "values": values}
    finally:
        if old is None:
            os.environ.pop(CANARY_ENV, None)
        else:
            os.environ[CANARY_ENV] = old


def test_corpus_is_well_formed() -> None:
    ids = [a["id"] for a in ATTACKS]
    assert len(ids) == len(set(ids)) and len(ids) >= 30
    for a in ATTACKS:
        assert set(a) == {"id", "source", "code"} and a["source"], a["id"]
        assert '"ESC" + "APED"' in a["code"] or "'ESC' + 'APED'" in a["code"], a["id"]
        assert MARK not in a["code"], a["id"]  # a traceback echoing the source must not look like a win


def leaked(text: str, values: list[str]) -> list[str]:
    return [v for v in values if v in text]


def test_a_real_leak_would_be_seen(markers: dict[str, Any]) -> None:
    """Control: the markers reach the output where nothing stops them (the marker itself
    in the sandbox; the canaries in plain CPython, which is what the attacks target)."""
    with SandboxREPL() as repl:
        r = repl.execute('print("ESC" + "APED")')
    assert leaked(r.stdout, markers["values"]) == [MARK]
    host_view = os.environ[CANARY_ENV] + Path(markers["path"]).read_text()
    assert len(leaked(host_view, markers["values"])) == 2


def test_every_attack_is_contained(markers: dict[str, Any]) -> None:
    leaks: list[str] = []
    refused = 0
    with SandboxREPL() as repl:
        for attack in ATTACKS:
            code = attack["code"].replace("__CANARY_FILE__", markers["path"])
            repl.reset()
            r = repl.execute(code)
            text = (r.stdout or "") + (r.error or "")
            found = leaked(text, markers["values"])
            if found:
                leaks.append(f"{attack['id']}: output contains {', '.join(v[:16] for v in found)}")
            refused += r.error is not None
            after = repl.execute("print(1 + 1)")
            if after.stdout != "2\n":
                leaks.append(f"{attack['id']}: the worker is not usable afterwards ({after.error_type})")
    assert Path(markers["path"]).read_text() == markers["file_value"]
    print(f"\nattack corpus: {len(ATTACKS) - len(leaks)}/{len(ATTACKS)} contained, {refused} ended in an error")
    assert not leaks, "\n".join(leaks)


def test_policy_cache_refuses_attacks_like_a_fresh_check() -> None:
    """The attacks (and renumbered variants) get the same verdict through the ShapeCache."""
    shapes = _policy.ShapeCache()
    for attack in ATTACKS:
        code = attack["code"].replace("__CANARY_FILE__", "/tmp/x")
        for variant in (code, code, re.sub(r"\b1\b", "2", code)):
            verdicts = []
            for cache in (None, shapes):
                try:
                    _policy.compile_cell(variant, cache)
                    verdicts.append("compiled")
                except SyntaxError as e:
                    verdicts.append(f"{type(e).__name__}: {e}")
            assert verdicts[0] == verdicts[1], (attack["id"], variant)
