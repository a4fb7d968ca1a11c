"""The seeded generators: deterministic, the requested size, and the gold answer recomputed
from the context alone by a small checker per task (regexes and ``ast``, not the generator)."""

from __future__ import annotations

import ast
import re
import time
from collections import Counter, defaultdict

import pytest

from loopagent.errors import ConfigError
from loopagent.evals.base import Item, get_task

GENERATORS = ["sniah", "oolong", "oolong_pairs", "multihop", "codeqa", "browsecomp"]
LENGTHS = [8_000, 50_000, 1_000_000]


def _length(context) -> int:
    if isinstance(context, str):
        return len(context)
    return sum(len(k) + len(v) for k, v in context.items())


# --- determinism, size, scoring ---------------------------------------------------------------

@pytest.mark.parametrize("name", GENERATORS)
def test_same_seed_same_items_other_seed_other_items(name):
    task = get_task(name)
    a = [it.model_dump() for it in task.generate(3, 20_000, seed=0)]
    b = [it.model_dump() for it in get_task(name).generate(3, 20_000, seed=0)]
    c = [it.model_dump() for it in task.generate(3, 20_000, seed=1)]
    assert a == b
    assert all(x["context"] != y["context"] for x, y in zip(a, c))
    assert len({it["id"] for it in a + c}) == 6
    # Item i does not depend on n: a longer run extends a shorter one.
    assert [it.model_dump() for it in task.generate(2, 20_000, seed=0)] == a[:2]
    # Items of one run differ from each other.
    assert len({str(it["context"])[:2000] + str(it["answer"]) for it in a}) == 3


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("name", GENERATORS)
def test_requested_length_is_respected(name, length):
    items = get_task(name).generate(2, length, seed=3)
    for it in items:
        assert it.length_chars == _length(it.context)
        assert abs(it.length_chars - length) <= 0.1 * length, (it.id, it.length_chars)


@pytest.mark.slow
@pytest.mark.parametrize("name", GENERATORS)
def test_ten_million_characters_in_a_few_seconds(name):
    start = time.perf_counter()
    (item,) = get_task(name).generate(1, 10_000_000, seed=0)
    elapsed = time.perf_counter() - start
    assert abs(item.length_chars - 10_000_000) <= 1_000_000
    assert elapsed < 10, elapsed  # about 1-2 s on a laptop core
    CHECKERS[name](item)


@pytest.mark.parametrize("name", GENERATORS)
def test_gold_scores_one_and_a_wrong_answer_less(name):
    task = get_task(name)
    for it in task.generate(4, 12_000, seed=5):
        gold = it.answer if isinstance(it.answer, str) else str(it.answer)
        if it.answer_type == "pairs":
            gold = ", ".join(f"({a}, {b})" for a, b in it.answer) or "none"
        assert task.score(it, gold) == 1.0, (it.id, gold)
        assert task.score(it, f"Answer: {gold}") == 1.0, (it.id, gold)
        assert task.score(it, None) == 0.0
        assert task.score(it, "I could not find it") < 1.0


def test_unknown_question_kinds_are_rejected():
    for name in ("oolong", "codeqa", "browsecomp"):
        with pytest.raises(ValueError, match="known"):
            get_task(name, kinds=["nope"])
    with pytest.raises(ValueError, match="known"):
        get_task("oolong_pairs", conditions=["nope"])
    with pytest.raises(ValueError):
        get_task("sniah").generate(1, 10, seed=0)


@pytest.mark.parametrize("name, options", [
    ("sniah", {"distractors": -1}), ("multihop", {"hops": 0}), ("multihop", {"hops": True}),
    ("multihop", {"max_distractor_hops": 1.5}), ("browsecomp", {"page_chars": 100}),
    ("oolong_pairs", {"max_users_per_label": 2}),
])
def test_integer_options_are_checked(name, options):
    (option,) = options
    with pytest.raises(ConfigError, match=f"^{option} must be"):
        get_task(name, **options)


@pytest.mark.parametrize("name", [*GENERATORS, "chains"])
def test_every_generator_checks_the_request(name):
    with pytest.raises(ValueError, match="n must be"):
        get_task(name).generate(-1, 20_000, seed=0)
    with pytest.raises(ValueError, match="length_chars must be at least"):
        get_task(name).generate(1, 999, seed=0)


# --- independent checkers ------------------------------------------------------------------------

def check_sniah(it: Item) -> None:
    key = it.meta["key"]
    assert key.lower() in it.question.lower()
    found = re.findall(r"The special magic number for (\S+) is (\d{7})\.", it.context)
    values = [v for k, v in found if k == key]
    assert values == [it.answer]
    assert len(found) == 1 + it.meta["distractors"]


def _oolong_rows(context: str) -> list[tuple[str, int, str, str | None]]:
    from loopagent.evals.tasks.oolong import LEXICON

    term_label = {term: label for label, terms in LEXICON.items() for term in terms}
    pattern = re.compile("|".join(sorted(map(re.escape, term_label), key=len, reverse=True)))
    rows = []
    for line in context.splitlines():
        m = re.fullmatch(r"Date: (.+?) \|\| User: (\d+) \|\| Instance: (.+?)(?: \|\| Label: (\w+))?", line)
        if not m:
            continue
        terms = pattern.findall(m.group(3))
        assert len(terms) == 1, line  # each instance names exactly one topic term
        label = term_label[terms[0]]
        if m.group(4):
            assert m.group(4) == label
        rows.append((m.group(1), int(m.group(2)), label, m.group(4)))
    return rows


def check_oolong(it: Item) -> None:
    rows = _oolong_rows(it.context)
    assert len(rows) == it.meta["n_records"]
    labels = it.meta["labels"]
    counts = Counter(label for _, _, label, _ in rows)
    q = it.question
    quoted = re.findall(r"'(\w+)'", q.split("Give your final answer")[0])
    if q.startswith("How many instances in the data"):
        assert it.answer == counts[quoted[0]]
    elif q.startswith("Which label is the most"):
        assert max(labels, key=lambda lab: counts[lab]) == it.answer
        assert sorted(counts[lab] for lab in labels)[-2] < counts[it.answer]
    elif q.startswith("Which label is the least"):
        assert min(labels, key=lambda lab: counts[lab]) == it.answer
        assert sorted(counts[lab] for lab in labels)[1] > counts[it.answer]
    elif q.startswith("In the data, is the label"):
        a, b = counts[quoted[0]], counts[quoted[1]]
        assert it.answer == ("more common" if a > b else "less common" if a < b else "same frequency")
    elif q.startswith("How many instances with the label"):
        user = int(re.search(r"did user (\d+) post", q).group(1))
        assert it.answer == sum(1 for _, u, lab, _ in rows if u == user and lab == quoted[0])
    elif q.startswith("Which user posted the most"):
        per_user = Counter(u for _, u, lab, _ in rows if lab == quoted[0])
        (top, n), *rest = per_user.most_common()
        assert str(top) == it.answer and (not rest or rest[0][1] < n)
    else:
        raise AssertionError(q)


def check_oolong_pairs(it: Item) -> None:
    have = defaultdict(set)
    for _, user, label, _ in _oolong_rows(it.context):
        have[user].add(label)
    x, y = it.meta["label_x"], it.meta["label_y"]
    assert f"'{x}'" in it.question
    cond = {
        "both": lambda a, b: x in a and x in b,
        "both_and": lambda a, b: {x, y} <= a and {x, y} <= b,
        "cross": lambda a, b: (x in a and y in b) or (y in a and x in b),
        "both_not": lambda a, b: x in a and x in b and y not in a and y not in b,
    }[it.meta["condition"]]
    users = sorted(have)
    gold = {frozenset((a, b)) for i, a in enumerate(users) for b in users[i + 1:] if cond(have[a], have[b])}
    assert gold == {frozenset(p) for p in it.answer}
    assert all(a < b for a, b in it.answer)


def check_multihop(it: Item) -> None:
    assignments = re.findall(r"Remember that (\w+) = (\w+)\.", it.context)
    table = dict(assignments)
    assert len(table) == len(assignments)  # every variable assigned once
    var = re.search(r"numeric value of (\w+)\?", it.question).group(1)
    hops = 0
    while not var.isdigit():
        var = table[var]
        hops += 1
    assert var == it.answer
    assert hops == it.meta["hops"]


def check_codeqa(it: Item) -> None:
    parts = re.split(r"^# ==== file: (\S+) ====\n", it.context, flags=re.M)
    files = dict(zip(parts[1::2], parts[2::2]))
    tree = ast.parse(files[it.meta["file"]])
    choices = it.meta["choices"]
    for letter, text in choices.items():
        assert f"({letter}) {text}" in it.question
    kind = it.meta["kind"]

    def function(qual: str):
        scope = tree.body
        *outer, last = qual.split(".")
        for name in outer:
            scope = next(n for n in scope if isinstance(n, ast.ClassDef) and n.name == name).body
        found = [n for n in scope if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == last]
        assert len(found) == 1, qual
        return found[0]

    def klass(name: str):
        found = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name]
        assert len(found) == 1, name
        return found[0]

    if kind == "param":
        def takes(option):
            a = function(option).args
            return it.meta["param"] in [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg] if x]
        truth = {letter: takes(opt) for letter, opt in choices.items()}
    elif kind == "default":
        a = function(it.meta["function"]).args
        pos = a.posonlyargs + a.args
        defaults = {x.arg: ast.unparse(d) for x, d in zip(pos[len(pos) - len(a.defaults):], a.defaults)}
        defaults.update({x.arg: ast.unparse(d) for x, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None})
        truth = {letter: opt == defaults[it.meta["param"]] for letter, opt in choices.items()}
    elif kind == "base":
        bases = {ast.unparse(b) for b in klass(it.meta["class"]).bases}
        truth = {letter: opt in bases for letter, opt in choices.items()}
    elif kind == "method":
        def defines(option):
            body = klass(option).body
            names = {n.name for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
            names |= {t.id for n in body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
            return it.meta["method"] in names
        truth = {letter: defines(opt) for letter, opt in choices.items()}
    elif kind == "defined":
        top = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        source = files[it.meta["file"]]
        truth = {letter: opt in top for letter, opt in choices.items()}
        for letter, opt in choices.items():
            if not truth[letter]:
                assert not re.search(rf"\b{re.escape(opt)}\b", source)
    else:
        raise AssertionError(kind)
    assert [letter for letter, ok in truth.items() if ok] == [it.answer], (it.question, truth)


def check_browsecomp(it: Item) -> None:
    persons, towns, orgs = {}, {}, {}
    for text in it.context.values():
        if m := re.search(r"^(.+) \(born (\d{4}) in (\w+)\) is an? (\w+)\.", text, re.M):
            founded = re.search(r"In (\d{4}), \w+ founded the (.+?)\.", text)
            persons[m.group(1)] = dict(born=int(m.group(2)), town=m.group(3), job=m.group(4),
                                       org=founded and founded.group(2), org_year=founded and int(founded.group(1)))
        elif m := re.search(r"^(\w+) is a town in the (.+?) region\. It was founded in (\d{4})\.", text, re.M):
            towns[m.group(1)] = dict(region=m.group(2), founded=int(m.group(3)))
        elif m := re.search(r"^The (.+?) is an? .+? headquartered in (\w+)\.", text, re.M):
            orgs[m.group(1)] = dict(hq=m.group(2))
    q = it.question
    if m := re.match(r"Which person was born in a town founded in (\d{4}), "
                     r"and later founded an organization headquartered in (\w+)\?", q):
        year, hq = int(m.group(1)), m.group(2)
        hits = [p for p, d in persons.items() if d["org"] and towns[d["town"]]["founded"] == year
                and orgs[d["org"]]["hq"] == hq]
    elif m := re.match(r"What is the name of the organization founded by an? (\w+) "
                       r"who was born in (\d{4}) in a town of the (.+?) region\?", q):
        job, born, region = m.group(1), int(m.group(2)), m.group(3)
        hits = [d["org"] for d in persons.values() if d["org"] and d["job"] == job and d["born"] == born
                and towns[d["town"]]["region"] == region]
    elif m := re.match(r"An organization was founded in (\d{4}) by a person born in (\w+)\. In which town", q):
        year, town = int(m.group(1)), m.group(2)
        hits = [orgs[d["org"]]["hq"] for d in persons.values()
                if d["org"] and d["town"] == town and d["org_year"] == year]
    else:
        raise AssertionError(q)
    assert hits == [it.answer]
    # The facts are spread: no single page holds every constraint and the answer.
    assert len(it.meta["doc_ids"]) >= 2 and all(d in it.context for d in it.meta["doc_ids"])


CHECKERS = {
    "sniah": check_sniah,
    "oolong": check_oolong,
    "oolong_pairs": check_oolong_pairs,
    "multihop": check_multihop,
    "codeqa": check_codeqa,
    "browsecomp": check_browsecomp,
}


@pytest.mark.parametrize("length", [8_000, 60_000, 1_000_000])
@pytest.mark.parametrize("name", GENERATORS)
def test_gold_answer_is_derivable_from_the_context(name, length):
    n = 12 if length < 100_000 else 3
    for it in get_task(name).generate(n, length, seed=11):
        CHECKERS[name](it)


@pytest.mark.parametrize(
    "name, options",
    [
        ("sniah", {"distractors": 4}),
        ("sniah", {"distractors": 2, "keys": "chars", "phrasing": "heldout", "case": "mixed"}),
        ("oolong", {"with_labels": True}),
        ("oolong_pairs", {"with_labels": True}),
        ("multihop", {"hops": 1, "distractors": 0}),
        ("multihop", {"hops": 6, "distractors": 30}),
    ],
)
def test_options_keep_answers_derivable(name, options):
    for it in get_task(name, **options).generate(6, 30_000, seed=2):
        CHECKERS[name](it)
        if name == "multihop":
            assert it.meta["hops"] == options["hops"]


def test_held_out_variants_of_the_embedded_root_families():
    """keys, phrasing and case change the question, never the answer's derivation."""
    from loopagent.evals.phrasings import phrasings

    canonical = get_task("sniah").generate(4, 5_000, seed=0)
    assert all(it.question == phrasings("needle", "canonical")[0].format(key=it.meta["key"]) for it in canonical)
    chars = get_task("sniah", keys="chars", phrasing="heldout", case="mixed").generate(40, 5_000, seed=0)
    assert all(re.fullmatch(r"[A-Za-z0-9]+(-[A-Za-z0-9]+)*", it.meta["key"]) for it in chars)
    templates = [re.escape(t).replace(r"\{key\}", "(.+)") for t in phrasings("needle", "heldout")]
    assert all(any(re.fullmatch(t, it.question, re.I) for t in templates) for it in chars)
    assert {it.question.isupper() for it in chars} == {True, False}
    for kind in ("value", "count"):
        items = get_task("chains", kind=kind, hops=2, phrasing="heldout", case="mixed").generate(12, 5_000, seed=1)
        plain = get_task("chains", kind=kind, hops=2).generate(12, 5_000, seed=1)
        assert [it.answer for it in items] == [it.answer for it in plain]  # the same documents and answers
        assert all(it.context == p.context for it, p in zip(items, plain))
        assert len({it.question.lower() for it in items}) == 12
        assert all(it.meta["variable"] in it.question.lower() for it in items)
    for options in ({"keys": "emoji"}, {"phrasing": "other"}, {"case": "random"}):
        with pytest.raises(ConfigError, match=next(iter(options))):
            get_task("sniah", **options)
    with pytest.raises(ConfigError, match="phrasing"):
        get_task("chains", phrasing="held-out")


@pytest.mark.parametrize("facts", ["sentences", "heldout_sentences"])
def test_fact_sentences_state_the_same_chains(facts):
    """Sentences in any template read back to the statements, and the answer resolves from them."""
    from loopagent.evals.chains import resolve
    from loopagent.evals.phrasings import fact_templates

    split = "train" if facts == "sentences" else "heldout"
    readers = [re.compile(re.escape(t).replace(r"\{a\}", "(?P<a>[a-z])").replace(r"\{b\}", "(?P<b>[a-z0-9])"))
               for t in fact_templates(split)]
    for it in get_task("chains", facts=facts, hops=3).generate(4, 20_000, seed=4):
        line = it.context.split("\n")[it.meta["section"] - 1]
        body = line.split(": ", 1)[1]
        sentences = re.split(r"(?<=\.) ", body)
        statements = []
        for sentence in sentences:
            m = next(r.fullmatch(sentence) for r in readers if r.fullmatch(sentence))
            statements.append(f"{m['a']}={m['b']}")
        assert resolve(statements, it.meta["variable"]) == (it.answer, 3)
        assert 15_000 < len(it.context) < 25_000


def test_every_question_kind_appears():
    kinds = Counter(it.meta["kind"] for it in get_task("oolong").generate(60, 10_000, seed=0))
    assert set(kinds) == {"count_label", "most_common", "least_common", "relative", "user_count", "user_most"}
    conditions = Counter(it.meta["condition"] for it in get_task("oolong_pairs").generate(30, 10_000, seed=0))
    assert set(conditions) == {"both", "both_and", "cross", "both_not"}
    kinds = Counter(it.meta["kind"] for it in get_task("codeqa").generate(40, 30_000, seed=0))
    assert set(kinds) == {"param", "default", "base", "method", "defined"}
    kinds = Counter(it.meta["kind"] for it in get_task("browsecomp").generate(20, 10_000, seed=0))
    assert len(kinds) == 3
    depths = [it.meta["depth"] for it in get_task("sniah").generate(30, 8_000, seed=0)]
    assert min(depths) < 0.2 and max(depths) > 0.8


def test_filler_is_varied_prose():
    context = get_task("sniah").generate(1, 200_000, seed=0)[0].context
    sentences = re.findall(r"[^.!?\n]+[.!?]", context)
    assert len(set(sentences)) > 0.3 * len(sentences) and len(set(sentences)) > 500


def test_items_do_not_depend_on_the_hash_seed():
    """Same items in fresh interpreters with different PYTHONHASHSEED (no set-order leaks)."""
    import os
    import subprocess
    import sys

    script = (
        "import hashlib, json\n"
        "from loopagent.evals.base import get_task\n"
        "h = hashlib.sha256()\n"
        f"for name in {GENERATORS!r}:\n"
        "    for it in get_task(name).generate(3, 20000, 7):\n"
        "        h.update(json.dumps(it.model_dump(), sort_keys=True, default=str).encode())\n"
        "print(h.hexdigest())\n"
    )
    digests = {
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        for seed in ("1", "2")
    }
    assert len(digests) == 1
