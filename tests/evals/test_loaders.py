"""Loaders on small hand-written files in the published formats, and their errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from loopagent.evals.base import UnknownTaskError, get_task, task_names
from loopagent.evals.loaders import BenchmarkFileError

FIXTURES = Path(__file__).parent / "fixtures"
OOLONG = FIXTURES / "oolong_synth.jsonl"
LONGBENCH = FIXTURES / "longbench_v2.json"
BROWSECOMP = FIXTURES / "browsecomp_plus.jsonl"
CORPUS = FIXTURES / "browsecomp_plus_corpus.jsonl"


# --- registry ----------------------------------------------------------------------------------

def test_every_task_is_registered():
    names = set(task_names())
    assert {"sniah", "oolong", "oolong_pairs", "multihop", "codeqa", "browsecomp",
            "oolong_synth", "longbench_v2", "longbench_v2_codeqa", "browsecomp_plus"} <= names


def test_unknown_task_lists_the_available_names():
    with pytest.raises(UnknownTaskError) as err:
        get_task("sniahh")
    message = str(err.value)
    assert "sniahh" in message
    for name in ("sniah", "oolong", "longbench_v2", "browsecomp_plus"):
        assert name in message
    assert isinstance(err.value, KeyError)


def test_loader_without_a_path_says_how_to_give_one():
    with pytest.raises(ValueError, match="path="):
        get_task("longbench_v2").generate(1, 0)


# --- OOLONG ----------------------------------------------------------------------------------------

def test_oolong_synth_loads_and_scores_with_the_harness_rules():
    task = get_task("oolong_synth", path=OOLONG)
    items = task.generate(10, 0)
    assert [it.id for it in items] == [f"oolong_synth-{i}" for i in range(1, 6)]
    by_id = {it.id: it for it in items}
    most, count, comparison, user, when = (by_id[f"oolong_synth-{i}"] for i in range(1, 6))
    assert most.context.startswith("The following lines contain")
    assert "|| Label:" not in most.context
    assert most.answer == "numeric value" and most.answer_type == "exact"
    assert count.answer == 2 and count.answer_type == "numeric"
    assert most.meta["task"] == "TASK_TYPE.MOST_FREQ" and most.meta["dataset"] == "trec_coarse"
    assert task.score(most, "Label: numeric value") == 1.0
    assert task.score(most, "Label: entity") == 0.0
    assert task.score(count, "Answer: 2") == 1.0
    assert task.score(count, "Answer: 4") == pytest.approx(0.5625)
    assert task.score(comparison, "Answer: entity is same frequency as location") == 1.0
    assert task.score(comparison, "Answer: entity is more common than location") == 0.0
    assert task.score(user, "User: 44436") == 1.0
    assert task.score(when, "Date: 2023-03-19") == 1.0
    # The gold answers agree with the fixture's own labelled lines.
    labelled = get_task("oolong_synth", path=OOLONG, with_labels=True).generate(1, 0)[0].context
    labels = re.findall(r"\|\| Label: (.+)", labelled)
    assert labels.count("numeric value") == count.answer


def test_oolong_synth_filters():
    assert [it.id for it in get_task("oolong_synth", path=OOLONG, dataset="spam").generate(10, 0)] == ["oolong_synth-5"]
    assert len(get_task("oolong_synth", path=OOLONG, context_len=1024).generate(10, 0)) == 4
    # length_chars keeps rows within a factor sqrt(2) of the request.
    size = len(json.loads(OOLONG.read_text().splitlines()[0])["context_window_text"])
    assert len(get_task("oolong_synth", path=OOLONG).generate(10, size)) == 5
    assert get_task("oolong_synth", path=OOLONG).generate(10, size * 4) == []


def test_loader_sampling_is_seeded_and_keeps_file_order():
    task = get_task("oolong_synth", path=OOLONG)
    a = [it.id for it in task.generate(3, 0, seed=1)]
    assert a == [it.id for it in task.generate(3, 0, seed=1)]
    assert a == sorted(a)
    assert len(set(a)) == 3
    assert {tuple(it.id for it in task.generate(3, 0, seed=s)) for s in range(8)} != {tuple(a)}


# --- LongBench v2 -----------------------------------------------------------------------------------

def test_longbench_v2_loads_and_scores():
    task = get_task("longbench_v2", path=LONGBENCH)
    items = task.generate(10, 0)
    assert [it.id for it in items] == ["longbench_v2-66f36490821e116aacb2cc22", "longbench_v2-66ebd0a65a08c7b9b35e0b4e",
                                       "longbench_v2-67073b7bd2b38bd4c1ec6ad1"]
    first = items[0]
    assert first.answer == "A" and first.answer_type == "choice"
    assert "(A) In the lighthouse" in first.question and "The correct answer is" in first.question
    assert first.meta["domain"] == "Single-Document QA" and first.meta["difficulty"] == "easy"
    assert task.score(first, "The correct answer is (A)") == 1.0
    assert task.score(first, "The correct answer is (B)") == 0.0
    assert task.score(first, "In the lighthouse") == 1.0
    assert task.score(first, None) == 0.0


def test_longbench_v2_codeqa_is_the_code_repository_domain():
    items = get_task("longbench_v2_codeqa", path=LONGBENCH).generate(10, 0)
    assert len(items) == 2
    assert all(it.meta["domain"] == "Code Repository Understanding" for it in items)
    assert all(it.task == "longbench_v2_codeqa" for it in items)
    hard = get_task("longbench_v2", path=LONGBENCH, domain="Code Repository Understanding",
                    difficulty="hard").generate(10, 0)
    assert [it.answer for it in hard] == ["C"]


def test_longbench_v2_reads_jsonl_too(tmp_path):
    rows = json.loads(LONGBENCH.read_text())
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(get_task("longbench_v2", path=path).generate(10, 0)) == 3


# --- BrowseComp-Plus ---------------------------------------------------------------------------------

def test_browsecomp_plus_loads_query_documents():
    task = get_task("browsecomp_plus", path=BROWSECOMP)
    items = task.generate(10, 0)
    assert [it.id for it in items] == ["browsecomp_plus-769", "browsecomp_plus-770"]
    first = items[0]
    assert set(first.context) == {"18639", "41759", "5412", "90001"}
    assert first.meta["evidence_docids"] == ["18639", "41759"] and first.meta["gold_docids"] == ["18639"]
    assert first.length_chars == sum(len(k) + len(v) for k, v in first.context.items())
    assert task.score(first, "Edda Varnholt") == 1.0
    assert task.score(first, "The keeper was edda varnholt.") == 1.0
    assert task.score(first, "Answer: Edda Varnholt.") == 1.0
    assert task.score(first, "Skarholm") == 0.0


def test_browsecomp_plus_pads_from_the_corpus():
    task = get_task("browsecomp_plus", path=BROWSECOMP, corpus=CORPUS)
    base = get_task("browsecomp_plus", path=BROWSECOMP).generate(10, 0)[0]
    target = base.length_chars + 300
    (item, _) = task.generate(10, target, seed=0)
    assert set(base.context) <= set(item.context)       # the query's own documents stay
    assert len(item.context) > len(base.context)
    assert item.length_chars >= target
    assert item.length_chars == sum(len(k) + len(v) for k, v in item.context.items())
    assert item.id == f"browsecomp_plus-L{target}-769"
    again = get_task("browsecomp_plus", path=BROWSECOMP, corpus=CORPUS).generate(10, target, seed=0)[0]
    assert again.model_dump() == item.model_dump()


# --- malformed files ---------------------------------------------------------------------------------

def _expect(path: Path, line: int | None, field: str | None, name: str, **options) -> BenchmarkFileError:
    with pytest.raises(BenchmarkFileError) as err:
        get_task(name, path=path, **options).generate(10, 0)
    e = err.value
    assert isinstance(e, ValueError)
    message = str(e)
    assert str(path) in message
    assert e.path == str(path)
    if line is not None:
        assert f"{path}:{line}:" in message and e.line == line
    if field is not None:
        assert repr(field) in message and e.field == field
    return e


def test_oolong_bad_lines(tmp_path):
    rows = [json.loads(line) for line in OOLONG.read_text().splitlines()]
    bad = tmp_path / "oolong.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n{not json\n")
    _expect(bad, 2, None, "oolong_synth")
    broken = dict(rows[1], answer="entity")
    bad.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(broken) + "\n")
    _expect(bad, 3, "answer", "oolong_synth")
    missing = {k: v for k, v in rows[2].items() if k != "question"}
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps(missing) + "\n")
    _expect(bad, 2, "question", "oolong_synth")
    bad.write_text(json.dumps(dict(rows[0], context_window_text=7)) + "\n")
    _expect(bad, 1, "context_window_text", "oolong_synth")
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[0]) + "\n")
    _expect(bad, 2, "id", "oolong_synth")
    bad.write_text("[1, 2]\n")
    _expect(bad, 1, None, "oolong_synth")


def test_longbench_bad_elements(tmp_path):
    rows = json.loads(LONGBENCH.read_text())
    bad = tmp_path / "data.json"
    second = {k: v for k, v in rows[1].items() if k != "choice_C"}
    bad.write_text(json.dumps([rows[0], second, rows[2]], indent=2))
    lines = bad.read_text().splitlines()
    start = lines.index("  {", lines.index("  {") + 1) + 1  # the line where the second element starts
    _expect(bad, start, "choice_C", "longbench_v2")
    bad.write_text(json.dumps([rows[0], dict(rows[1], answer="E")], indent=2))
    _expect(bad, start, "answer", "longbench_v2")
    bad.write_text(json.dumps([rows[0], dict(rows[1], context=["not", "text"])], indent=2))
    _expect(bad, start, "context", "longbench_v2")
    text = json.dumps(rows, indent=2)
    bad.write_text(text[: len(text) // 2])  # truncated download
    e = _expect(bad, None, None, "longbench_v2")
    assert e.line is not None and e.line > 1
    bad.write_text('[{"_id": "x"} {"_id": "y"}]')
    _expect(bad, 1, None, "longbench_v2")


def test_browsecomp_bad_documents(tmp_path):
    rows = [json.loads(line) for line in BROWSECOMP.read_text().splitlines()]
    bad = tmp_path / "queries.jsonl"
    broken = json.loads(json.dumps(rows[1]))
    del broken["gold_docs"][0]["text"]
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps(broken) + "\n")
    _expect(bad, 2, "gold_docs[0].text", "browsecomp_plus")
    bad.write_text(json.dumps(dict(rows[0], evidence_docs="doc1")) + "\n")
    _expect(bad, 1, "evidence_docs", "browsecomp_plus")
    bad.write_text(json.dumps({k: v for k, v in rows[0].items() if k != "answer"}) + "\n")
    _expect(bad, 1, "answer", "browsecomp_plus")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"docid": "1", "text": "a"}\n{"docid": "2"}\n')
    with pytest.raises(BenchmarkFileError, match=rf"{re.escape(str(corpus))}:2: field 'text'"):
        get_task("browsecomp_plus", path=BROWSECOMP, corpus=corpus).generate(1, 100_000)


def test_missing_file_is_a_benchmark_file_error(tmp_path):
    _expect(tmp_path / "nope.json", None, None, "longbench_v2")
    _expect(tmp_path / "nope.jsonl", None, None, "oolong_synth")
