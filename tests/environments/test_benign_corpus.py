"""Benign-code corpus: ordinary Python from other agent frameworks' tests, run in SandboxREPL.

The snippets (``corpus/benign/snippets.jsonl``, sources and licences in its README) are
vetted data: standard library only, deterministic, no files, network or clock. Each
one runs here twice: in plain CPython (``exec`` in this process, a fresh namespace,
stdout captured, a trailing expression shown like the sandbox shows it) and in one
SandboxREPL worker, ``reset()`` between snippets. A snippet passes when the sandbox
prints the same and fails only where CPython failed, with the same exception type.

The pass rate is a ratchet: it may rise (the language-layer work lets more ordinary
code through) but not fall below ``MIN_PASS_RATE``. Raise the floor when it rises.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
import types
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopagent.environments import SandboxREPL, _policy

CORPUS = Path(__file__).parent / "corpus" / "benign" / "snippets.jsonl"
# Measured 2026-12-01: 133 of 138 before the language layer let ordinary programming through,
# 136 of 138 after (left: rebinding `print`, reading `__class__` of an int: `type(x)` works).
# The bar is 95%.
MEASURED_PASS_RATE = 136 / 138
MIN_PASS_RATE = 0.95


def load() -> list[dict[str, Any]]:
    return [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


SNIPPETS = load()


def run_cpython(code: str) -> tuple[str, str | None]:
    """stdout and exception type of ``code`` in plain CPython, shown like SandboxREPL shows a cell."""
    tree = ast.parse(code, "<repl>", "exec")
    last = None
    body = tree.body
    if body and isinstance(body[-1], ast.Expr) and not (
        isinstance(body[-1].value, ast.Call) and isinstance(body[-1].value.func, ast.Name)
        and body[-1].value.func.id == "print"
    ):
        last = ast.Expression(body.pop().value)
    ns: dict[str, Any] = {"__name__": "repl"}  # the sandbox's module name, so class reprs compare
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            exec(compile(tree, "<repl>", "exec"), ns)
            if last is not None:
                value = eval(compile(last, "<repl>", "eval"), ns)
                if value is not None:
                    print(repr(value))
        except Exception as e:
            return out.getvalue(), type(e).__name__
    return out.getvalue(), None


#: Language features by a quick look at the code, to group the failures.
FEATURES: dict[str, str] = {
    "class": r"^\s*class ", "super": r"\bsuper\(", "dunder_method": r"def __\w+__", "dataclass": r"dataclass",
    "typing": r"\btyping\b|\bList\[|\bDict\[|Optional\[", "enum": r"\benum\b|\bEnum\b", "generator": r"\byield\b",
    "comprehension": r"\bfor\b[^\n]*\bin\b[^\n]*[\]\}\)]", "closure": r"\bnonlocal\b|\bglobal\b",
    "match": r"^\s*match ",
    "exception": r"\btry:|\braise\b|\bexcept\b", "f_string": r"\bf['\"]", "format": r"\.format\(|%[sdr]",
    "lambda": r"\blambda\b", "with": r"^\s*with ", "import": r"^\s*(import|from) ", "private_name": r"\b_[a-z]\w*",
    "decorator": r"^\s*@", "walrus": r":=", "star": r"\*\w",
}


def features(code: str) -> list[str]:
    return [name for name, pattern in FEATURES.items() if re.search(pattern, code, re.M)]


@dataclass
class Outcome:
    id: str
    ok: bool
    why: str
    features: list[str]


def compare(repl: SandboxREPL, snippet: dict[str, Any]) -> Outcome:
    code = snippet["code"]
    want_out, want_err = run_cpython(code)
    repl.reset()
    r = repl.execute(code)
    feats = features(code)
    if r.error is not None and want_err is None:
        first = r.error.strip().splitlines()[-1][:160]
        return Outcome(snippet["id"], False, f"{r.error_type}: {first}", feats)
    if want_err is not None and r.error_type != want_err:
        return Outcome(snippet["id"], False, f"CPython raised {want_err}, the sandbox {r.error_type}", feats)
    if r.stdout != want_out:
        return Outcome(snippet["id"], False, f"stdout {r.stdout[:80]!r} != {want_out[:80]!r}", feats)
    return Outcome(snippet["id"], True, "", feats)


def test_corpus_is_well_formed() -> None:
    ids = [s["id"] for s in SNIPPETS]
    assert len(ids) == len(set(ids)), "ids must be unique"
    assert len(SNIPPETS) >= 100
    for s in SNIPPETS:
        assert set(s) <= {"id", "source", "code", "adapted"} and s["source"] and s["code"].endswith("\n"), s["id"]
        ast.parse(s["code"])
        assert not re.search(r"\bopen\(|\bos\b|\bsys\b|subprocess|socket|\btime\b|__import__", s["code"]), s["id"]


def test_corpus_runs_in_plain_cpython() -> None:
    """The data is what it says: every snippet runs cleanly and prints something in CPython."""
    for s in SNIPPETS:
        out, err = run_cpython(s["code"])
        assert err is None and out.strip(), (s["id"], err)


def test_benign_corpus_pass_rate() -> None:
    with SandboxREPL() as repl:
        outcomes = [compare(repl, s) for s in SNIPPETS]
    failed = [o for o in outcomes if not o.ok]
    rate = 1 - len(failed) / len(outcomes)
    by_feature = Counter(f for o in failed for f in o.features)
    print(f"\nbenign corpus: {len(outcomes) - len(failed)}/{len(outcomes)} identical ({rate:.1%})")
    print("failures by feature:", dict(by_feature.most_common()))
    print("failures by error:", dict(Counter(o.why.split(":")[0] for o in failed).most_common()))
    for o in failed:
        print(f"  FAIL {o.id}: {o.why}")
    assert rate >= MIN_PASS_RATE, f"pass rate {rate:.1%} fell below the ratchet {MIN_PASS_RATE:.1%}"


def _renumbered(code: str) -> str:
    """The snippet with every one-digit int literal changed (same width), a cell the
    policy cache should serve from the snippet's template."""
    return re.sub(r"\b[1-8]\b", lambda m: str(int(m.group()) + 1), code)


def _same(a: types.CodeType | None, b: types.CodeType | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b and a.co_flags == b.co_flags and list(a.co_positions()) == list(b.co_positions())


def _outcome(code: str, shapes: _policy.ShapeCache | None) -> Any:
    try:
        cell = _policy.compile_cell(code, shapes)
    except SyntaxError as e:
        return ("refused", type(e).__name__, str(e))
    return cell


def test_policy_cache_gives_the_code_a_fresh_check_gives() -> None:
    """``compile_cell`` with a ShapeCache compiles each snippet and renumbered variants
    (served from the cache from the second sighting on) exactly as without one."""
    shapes = _policy.ShapeCache()
    checked = 0
    for s in SNIPPETS:
        variants = [s["code"], s["code"], _renumbered(s["code"]), _renumbered(_renumbered(s["code"]))]
        for code in variants:
            fresh, cached = _outcome(code, None), _outcome(code, shapes)
            if isinstance(fresh, tuple) or isinstance(cached, tuple):
                assert fresh == cached, (s["id"], code)
                continue
            assert _same(fresh.body, cached.body) and _same(fresh.last_expr, cached.last_expr), (s["id"], code)
            checked += 1
    assert checked > len(SNIPPETS)
