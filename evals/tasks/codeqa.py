"""``codeqa``: multiple-choice questions about a real code base (LongBench v2's code-repository
domain, generated): the installed Python standard library.

The context is whole source files, each under a header ``# ==== file: json/decoder.py ====``,
up to the requested length. The question concerns one of them (the anchor) and is a fact read
off its syntax tree, so ``ast`` can check it:

- ``param``: which of four functions of the module takes a parameter named P;
- ``default``: the default value of parameter P of function F;
- ``base``: which of four names is a direct base class of class C;
- ``method``: which of four classes of the module defines a method named X;
- ``defined``: which of four function names is defined at the module's top level.

Options are labelled A-D; the answer is a letter. Items depend on the Python version whose
standard library is installed (recorded in ``meta["python"]``). Contexts grow up to the size of
that library: about 10 M characters without its test suites, about 30 M with them (used
automatically for requests above 9 M); a larger request is capped (``meta["capped"]``).
"""

from __future__ import annotations

import ast
import functools
import os
import random
import re
import sys
import sysconfig
from pathlib import Path

from loopagent.evals.base import Item, ItemSlot, Task, check_choices, register
from loopagent.evals.scorers import choice_accuracy

LETTERS = ("A", "B", "C", "D")
FILE_HEADER = "# ==== file: {path} ===="
# encodings/: a hundred near-identical codec tables would crowd short contexts.
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "idlelib", "turtledemo", "ensurepip", "lib2to3",
              "encodings"}
_TEST_DIRS = {"test", "tests", "idle_test"}
_FALLBACK_DEFAULTS = ["None", "True", "False", "0", "1", "-1", "''", "()", "2", "'utf-8'", "'strict'", "8192"]
_FALLBACK_BASES = ["Exception", "ValueError", "object", "dict", "list", "int", "str", "tuple", "Enum",
                   "RuntimeError", "TypeError", "OSError", "KeyError", "IntEnum", "NamedTuple", "Protocol"]
_FALLBACK_FUNCS = ["load_config", "parse_header", "render_table", "split_words", "normalize_path",
                   "read_chunk", "merge_options", "format_record", "walk_tree", "close_all", "encode_block",
                   "make_parser", "check_bounds", "flush_buffer", "resolve_name", "scan_tokens"]


def module_name(rel: str) -> str:
    """``json/decoder.py`` -> ``json.decoder``; ``json/__init__.py`` -> ``json``."""
    parts = rel[:-3].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


@functools.lru_cache(maxsize=2)
def corpus_files(include_tests: bool = False) -> tuple[tuple[str, str], ...]:
    """(relative path, absolute path) of the standard library's ``.py`` files, sorted."""
    root = sysconfig.get_paths()["stdlib"]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        parts = [] if rel_dir == "." else rel_dir.split(os.sep)
        if any(p in _SKIP_DIRS or p.startswith("config-") for p in parts) or (
                not include_tests and any(p in _TEST_DIRS for p in parts)):
            dirnames[:] = []
            continue
        for name in filenames:
            if name.endswith(".py"):
                rel = "/".join([*parts, name])
                out.append((rel, os.path.join(dirpath, name)))
    return tuple(sorted(out))


def _corpus_for(length_chars: int) -> tuple[tuple[str, str], ...]:
    """The files a context of ``length_chars`` draws from: the test suites join in only when the
    rest is too small to fill it."""
    files = corpus_files(False)
    if length_chars > 0.9 * sum(_size(p) for _, p in files):
        files = corpus_files(True)
    return files


@functools.cache
def _source(path: str) -> str:
    return Path(path).read_text(encoding="utf-8", errors="replace")


@functools.cache
def _size(path: str) -> int:
    return os.path.getsize(path)


@functools.lru_cache(maxsize=512)
def _facts(path: str) -> dict | None:
    """What the question kinds need from one file, or None if it does not parse."""
    try:
        tree = ast.parse(_source(path))
    except (SyntaxError, ValueError):
        return None
    funcs: dict[str, list[ast.arguments]] = {}
    top_funcs: list[str] = []
    classes: dict[str, ast.ClassDef] = {}
    class_count: dict[str, int] = {}
    # Every identifier the file mentions: a "not defined here" option must not occur at all.
    all_defined: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            all_defined.add(node.name)
        elif isinstance(node, ast.Name):
            all_defined.add(node.id)
        elif isinstance(node, ast.Attribute):
            all_defined.add(node.attr)
        elif isinstance(node, ast.alias):
            all_defined.update(filter(None, (node.name.split(".")[-1], node.asname)))
        elif isinstance(node, ast.arg):
            all_defined.add(node.arg)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            funcs.setdefault(node.name, []).append(node.args)
            top_funcs.append(node.name)
        elif isinstance(node, ast.ClassDef):
            classes[node.name] = node
            class_count[node.name] = class_count.get(node.name, 0) + 1
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    funcs.setdefault(f"{node.name}.{sub.name}", []).append(sub.args)
    # Names defined twice (conditional definitions, property setters) are ambiguous: drop them.
    funcs = {k: v[0] for k, v in funcs.items() if len(v) == 1 and k.split(".")[0] not in
             {c for c, n in class_count.items() if n > 1}}
    classes = {k: v for k, v in classes.items() if class_count[k] == 1}
    top_funcs = [f for f in top_funcs if f in funcs]
    return {"funcs": funcs, "top_funcs": top_funcs, "classes": classes, "all_defined": all_defined,
            "source": _source(path)}


def param_names(args: ast.arguments) -> list[str]:
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    if args.vararg:
        names.append(args.vararg.arg)
    if args.kwarg:
        names.append(args.kwarg.arg)
    return names


def param_defaults(args: ast.arguments) -> dict[str, str]:
    positional = args.posonlyargs + args.args
    out = {a.arg: ast.unparse(d) for a, d in zip(positional[len(positional) - len(args.defaults):], args.defaults)}
    out.update({a.arg: ast.unparse(d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None})
    return out


def class_methods(node: ast.ClassDef) -> set[str]:
    """Methods defined with ``def`` directly in the class body."""
    return {s.name for s in node.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))}


def class_bindings(node: ast.ClassDef) -> set[str]:
    """Every name the class body binds: methods, nested classes, assigned attributes."""
    out = set()
    for s in node.body:
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(s.name)
        elif isinstance(s, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = s.targets if isinstance(s, ast.Assign) else [s.target]
            for t in targets:
                out.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
    return out


def _options(rng: random.Random, correct: str, wrong: list[str]) -> tuple[dict[str, str], str]:
    picks = [correct, *rng.sample(wrong, 3)]
    rng.shuffle(picks)
    return dict(zip(LETTERS, picks)), LETTERS[picks.index(correct)]


def _q_param(rng: random.Random, mod: str, facts: dict) -> tuple | None:
    funcs = {k: set(param_names(v)) - {"self", "cls"} for k, v in facts["funcs"].items()}
    names = sorted(funcs)
    if len(names) < 4:
        return None
    for _ in range(8):
        correct = rng.choice(names)
        params = sorted(funcs[correct])
        if not params:
            continue
        p = rng.choice(params)
        wrong = [f for f in names if p not in funcs[f]]
        if len(wrong) < 3:
            continue
        choices, letter = _options(rng, correct, wrong)
        q = f"In module `{mod}`, which of these functions takes a parameter named `{p}`?"
        return q, choices, letter, {"param": p}
    return None


def _q_default(rng: random.Random, mod: str, facts: dict) -> tuple | None:
    cands = [(f, p, d) for f, a in sorted(facts["funcs"].items()) for p, d in sorted(param_defaults(a).items())
             if len(d) <= 60]
    if not cands:
        return None
    f, p, d = rng.choice(cands)
    pool = sorted({dd for _, _, dd in cands} | set(_FALLBACK_DEFAULTS))
    wrong = [x for x in pool if x != d]
    choices, letter = _options(rng, d, wrong)
    q = f"In module `{mod}`, what is the default value of the parameter `{p}` of `{f}`?"
    return q, choices, letter, {"function": f, "param": p}


def _q_base(rng: random.Random, mod: str, facts: dict) -> tuple | None:
    cands = [(c, [ast.unparse(b) for b in node.bases]) for c, node in sorted(facts["classes"].items()) if node.bases]
    if not cands:
        return None
    c, bases = rng.choice(cands)
    correct = rng.choice(bases)
    pool = sorted((set(facts["classes"]) | set(_FALLBACK_BASES) | {b for _, bs in cands for b in bs})
                  - set(bases) - {c})
    choices, letter = _options(rng, correct, pool)
    q = f"In module `{mod}`, which of these is a direct base class of class `{c}`?"
    return q, choices, letter, {"class": c}


def _q_method(rng: random.Random, mod: str, facts: dict) -> tuple | None:
    classes = {c: class_methods(node) for c, node in facts["classes"].items()}
    bound = {c: class_bindings(node) for c, node in facts["classes"].items()}
    names = sorted(classes)
    if len(names) < 4:
        return None
    for _ in range(8):
        correct = rng.choice(names)
        methods = sorted(classes[correct])
        if not methods:
            continue
        m = rng.choice(methods)
        wrong = [c for c in names if m not in bound[c]]
        if len(wrong) < 3:
            continue
        choices, letter = _options(rng, correct, wrong)
        q = f"In module `{mod}`, which of these classes defines a method named `{m}` in its own body?"
        return q, choices, letter, {"method": m}
    return None


def _q_defined(rng: random.Random, mod: str, facts: dict, others: list[str]) -> tuple | None:
    if not facts["top_funcs"]:
        return None
    correct = rng.choice(sorted(facts["top_funcs"]))
    def absent(names: list[str]) -> list[str]:
        return [name for name in sorted(set(names) - facts["all_defined"])
                if not re.search(rf"\b{re.escape(name)}\b", facts["source"])]

    # Real function names from other modules; made-up ones only when those run short.
    pool = absent(others)
    if len(pool) < 3:
        pool += absent(_FALLBACK_FUNCS)
    choices, letter = _options(rng, correct, pool)
    q = f"Which of these functions is defined at the top level of module `{mod}`?"
    return q, choices, letter, {}


KINDS = ("param", "default", "base", "method", "defined")


@register
class CodeQA(Task):
    """Multiple choice about the Python standard library's source, checkable with ``ast``."""

    name = "codeqa"
    description = "CodeQA-style multiple choice over the installed Python standard library sources (facts from ast)"

    def __init__(self, kinds: tuple[str, ...] | list[str] | None = None) -> None:
        self.kinds = check_choices(kinds, KINDS, "codeqa question kinds")

    def make_item(self, rng: random.Random, slot: ItemSlot) -> Item:
        length_chars = slot.length_chars
        files = _corpus_for(length_chars)
        budget = length_chars
        header_cost = 60
        fitting = [f for f in files if _size(f[1]) + header_cost <= 0.9 * budget]
        if not fitting:
            fitting = sorted(files, key=lambda f: _size(f[1]))[:20]
        order = list(fitting)
        rng.shuffle(order)
        kinds = list(self.kinds)
        rng.shuffle(kinds)
        found = None
        # The kind first, then a file that supports it: every kind gets its share.
        for kind in kinds:
            for rel, path in order[:300]:
                facts = _facts(path)
                if facts is None:
                    continue
                mod = module_name(rel)
                if kind == "defined":
                    others = [name for _ in range(3)
                              for name in (_facts(rng.choice(files)[1]) or {"top_funcs": []})["top_funcs"]]
                    made = _q_defined(rng, mod, facts, others)
                else:
                    made = {"param": _q_param, "default": _q_default, "base": _q_base,
                            "method": _q_method}[kind](rng, mod, facts)
                if made:
                    found = (rel, path, kind, made)
                    break
            if found:
                break
        if found is None:
            raise RuntimeError("codeqa: no standard-library file yields a question at this length")
        rel, path, kind, (question, choices, letter, extra) = found
        context = self._context(rng, files, rel, path, budget)
        options = "\n".join(f"({k}) {v}" for k, v in choices.items())
        return slot.item(
            question=f"{question}\n{options}\nAnswer with the letter of the correct option.",
            context=context,
            answer=letter,
            answer_type="choice",
            meta={"kind": kind, "file": rel, "module": module_name(rel), "choices": choices, **extra,
                  "python": ".".join(map(str, sys.version_info[:3])), "capped": len(context) < 0.9 * length_chars},
        )

    @staticmethod
    def _block(rel: str, path: str) -> str:
        return FILE_HEADER.format(path=rel) + "\n" + _source(path).rstrip("\n") + "\n\n"

    def _context(self, rng: random.Random, files: tuple[tuple[str, str], ...], rel: str, path: str, budget: int) -> str:
        anchor = self._block(rel, path)
        blocks = []
        remaining = budget - len(anchor)
        order = [f for f in files if f[0] != rel]
        rng.shuffle(order)
        for r, p in order:
            if remaining < 0.01 * budget:
                break
            if _size(p) + 40 > remaining * 1.05:
                continue
            block = self._block(r, p)
            if len(block) <= remaining:
                blocks.append(block)
                remaining -= len(block)
        blocks.insert(rng.randrange(len(blocks) + 1), anchor)
        return "".join(blocks)

    def score(self, item: Item, prediction: str | None) -> float:
        """Multiple-choice accuracy: "B", "(B)", "Answer: B", "The correct answer is (B)" or the
        option's text (see :func:`loopagent.evals.scorers.choice_accuracy`)."""
        return choice_accuracy(prediction, item.answer, item.meta.get("choices"))
