"""Loaders for the public benchmarks' own files, when a user has them on disk.

=========================  =============================================================
task                       file(s)
=========================  =============================================================
``oolong_synth``           OOLONG-synth rows as JSONL (the Hugging Face parquet exported
                           one row per line: ``id, context_len, dataset,
                           context_window_text, [context_window_text_with_labels],
                           question, task_group, task, answer, answer_type, ...``)
``longbench_v2``           LongBench v2 ``data.json`` (a JSON array; JSONL also read):
                           ``_id, domain, sub_domain, difficulty, length, question,
                           choice_A..choice_D, answer, context``
``longbench_v2_codeqa``    the same, only the "Code Repository Understanding" domain
``browsecomp_plus``        BrowseComp-Plus decrypted queries JSONL (``query_id, query,
                           answer, evidence_docs, gold_docs, negative_docs``; docs are
                           ``{docid, text}``), optionally with the corpus JSONL
                           (``docid, text[, url]``) to pad each query's documents
=========================  =============================================================

Use them like the generators::

    task = get_task("longbench_v2", path="~/data/LongBench-v2/data.json")
    items = task.generate(n=50, length_chars=500_000, seed=0)

``generate(n, length_chars, seed)`` keeps the rows whose context length lies in
``[length_chars / w, length_chars * w)`` (``w = length_window``, default sqrt 2, so a sweep of
doubling lengths puts every row in one bucket; ``length_chars=0`` keeps every row), then takes
a seeded sample of ``n`` of them in file order. Item ids are ``<task>-<the row's own id>``.

A malformed file raises :class:`BenchmarkFileError` naming the file, the line and the field.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loopagent.errors import ConfigError, LoopagentError
from loopagent.evals.base import Item, Task, register
from loopagent.evals.scorers import choice_accuracy, exact_match, oolong_gold, oolong_synth_score
from loopagent.validation import check_int

__all__ = ["BenchmarkFileError", "OolongSynthFile", "LongBenchV2File", "LongBenchV2CodeQA", "BrowseCompPlusFile"]


class BenchmarkFileError(LoopagentError, ValueError):
    """A benchmark file that cannot be read as its published format.

    ``str(err)`` reads ``<file>:<line>: field '<field>': <problem>``; the parts are also
    attributes (``path``, ``line``, ``field``, ``problem``)."""

    def __init__(self, path: str | os.PathLike[str], line: int | None, field: str | None, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.problem = problem
        where = self.path if line is None else f"{self.path}:{line}"
        what = f" field {field!r}:" if field else ""
        super().__init__(f"{where}:{what} {problem}")


# --- reading --------------------------------------------------------------------------------

def _open_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BenchmarkFileError(path, None, None, "no such file") from None
    except IsADirectoryError:
        raise BenchmarkFileError(path, None, None, "is a directory, expected a file") from None
    except UnicodeDecodeError as e:
        raise BenchmarkFileError(path, None, None, f"not UTF-8 text ({e.reason} at byte {e.start})") from None


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, value) for every non-blank line of a JSONL file."""
    try:
        handle = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise BenchmarkFileError(path, None, None, "no such file") from None
    except IsADirectoryError:
        raise BenchmarkFileError(path, None, None, "is a directory, expected a file") from None
    with handle:
        lineno = 0
        while True:
            try:
                line = handle.readline()
            except UnicodeDecodeError as e:
                raise BenchmarkFileError(path, lineno + 1, None, f"not UTF-8 text ({e.reason})") from None
            if not line:
                return
            lineno += 1
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise BenchmarkFileError(path, lineno, None, f"invalid JSON ({e.msg} at column {e.colno})") from None


def iter_json_array(path: Path) -> Iterator[tuple[int, Any]]:
    """(line where the element starts, element) for a JSON array file, element by element, so
    errors can name a line; a file that does not start with ``[`` is read as JSONL."""
    text = _open_text(path)
    start = len(text) - len(text.lstrip())
    if not text[start:start + 1] == "[":
        yield from iter_jsonl(path)
        return
    decoder = json.JSONDecoder()
    pos = start + 1
    line = text.count("\n", 0, pos) + 1

    def skip(p: int) -> int:
        nonlocal line
        q = p
        while q < len(text) and text[q] in " \t\r\n":
            q += 1
        line += text.count("\n", p, q)
        return q

    pos = skip(pos)
    if text[pos:pos + 1] == "]":
        return
    while True:
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise BenchmarkFileError(path, e.lineno, None, f"invalid JSON ({e.msg} at column {e.colno})") from None
        yield line, value
        line += text.count("\n", pos, end)
        pos = skip(end)
        ch = text[pos:pos + 1]
        if ch == ",":
            pos = skip(pos + 1)
            continue
        if ch == "]":
            return
        raise BenchmarkFileError(path, line, None, "invalid JSON (expected ',' or ']' between array elements)")


def _require(path: Path, line: int, row: Any, field: str, kinds: type | tuple[type, ...], *,
             optional: bool = False) -> Any:
    if not isinstance(row, dict):
        raise BenchmarkFileError(path, line, None, f"expected a JSON object, got {type(row).__name__}")
    if field not in row or row[field] is None:
        if optional:
            return None
        raise BenchmarkFileError(path, line, field, "missing")
    value = row[field]
    if isinstance(value, bool) or not isinstance(value, kinds):
        names = kinds.__name__ if isinstance(kinds, type) else " or ".join(k.__name__ for k in kinds)
        raise BenchmarkFileError(path, line, field, f"expected {names}, got {type(value).__name__}")
    return value


def _resolve(path: str | os.PathLike[str] | None, task: str) -> Path:
    if path is None:
        raise ConfigError(
            f"task {task!r} reads a benchmark file: pass path=..., e.g. get_task({task!r}, path='data.json')")
    return Path(path).expanduser()


class _FileTask(Task):
    """A task whose items come from a file; see the module docstring for ``generate``."""

    def __init__(self, path: str | os.PathLike[str] | None = None, length_window: float = math.sqrt(2)) -> None:
        if length_window < 1:
            raise ConfigError("length_window must be >= 1")
        self.path = None if path is None else Path(path).expanduser()
        self.length_window = length_window

    def rows(self, length_chars: int = 0) -> list[Item]:
        """The file's items (after the task's own filters) in file order; with ``length_chars``
        only those in its length window, dropped while reading so a huge file stays cheap."""
        raise NotImplementedError

    def _fits(self, n_chars: int, length_chars: int) -> bool:
        if not length_chars:
            return True
        return length_chars / self.length_window <= n_chars < length_chars * self.length_window

    def generate(self, n: int, length_chars: int, seed: int = 0) -> list[Item]:
        check_int(n, "n", minimum=0, error=ValueError)
        items = self.rows(length_chars)
        if n >= len(items):
            return items
        keep = sorted(random.Random(f"{self.name}|{seed}").sample(range(len(items)), n))
        return [items[i] for i in keep]


# --- OOLONG ------------------------------------------------------------------------------------

@register
class OolongSynthFile(_FileTask):
    """OOLONG-synth rows from a JSONL export of ``oolongbench/oolong-synth``.

    Options: ``path`` (required), ``dataset`` (keep one source dataset, e.g. ``"trec_coarse"``),
    ``context_len`` (keep one token bucket, e.g. ``131072``), ``with_labels`` (use
    ``context_window_text_with_labels``). Scoring follows the harness: exact match after its
    answer parse, numeric ``0.75 ** |y - y_hat|``, comparison phrases, dates."""

    name = "oolong_synth"
    description = "OOLONG-synth from its released rows (JSONL); the harness's scoring rules"

    def __init__(self, path: str | os.PathLike[str] | None = None, dataset: str | None = None,
                 context_len: int | None = None, with_labels: bool = False,
                 length_window: float = math.sqrt(2)) -> None:
        super().__init__(path, length_window)
        self.dataset = dataset
        self.context_len = context_len
        self.with_labels = with_labels

    def rows(self, length_chars: int = 0) -> list[Item]:
        path = _resolve(self.path, self.name)
        column = "context_window_text_with_labels" if self.with_labels else "context_window_text"
        out = []
        seen: set[str] = set()
        for line, row in iter_jsonl(path):
            rid = _require(path, line, row, "id", (int, str))
            question = _require(path, line, row, "question", str)
            answer_raw = _require(path, line, row, "answer", (str, list))
            answer_type = _require(path, line, row, "answer_type", str)
            dataset = _require(path, line, row, "dataset", str, optional=True)
            context_len = _require(path, line, row, "context_len", int, optional=True)
            if self.dataset is not None and dataset != self.dataset:
                continue
            if self.context_len is not None and context_len != self.context_len:
                continue
            context = _require(path, line, row, column, str)
            if not self._fits(len(context), length_chars):
                continue
            if isinstance(answer_raw, list):  # some exports store the list itself
                answer_raw = repr(answer_raw)
            try:
                gold = oolong_gold(answer_raw)
            except (ValueError, SyntaxError, TypeError) as e:
                raise BenchmarkFileError(
                    path, line, "answer", f"not an OOLONG answer literal such as \"['entity']\" or \"[12]\" ({e})"
                ) from None
            key = str(rid)
            if key in seen:
                raise BenchmarkFileError(path, line, "id", f"duplicate id {rid!r}")
            seen.add(key)
            out.append(Item(
                id=f"{self.name}-{rid}",
                task=self.name,
                question=question,
                context=context,
                answer=gold if isinstance(gold, (int, float, str)) else str(gold),
                answer_type="numeric" if answer_type == "ANSWER_TYPE.NUMERIC" else "exact",
                length_chars=len(context),
                meta={"answer_raw": answer_raw, "oolong_answer_type": answer_type, "line": line,
                      **{k: row.get(k) for k in ("dataset", "context_len", "task_group", "task",
                                                   "input_subset", "num_labels", "context_window_id") if k in row}},
            ))
        return out

    def score(self, item: Item, prediction: str | None) -> float:
        return oolong_synth_score(prediction, item.meta["answer_raw"], item.meta["oolong_answer_type"])


# --- LongBench v2 --------------------------------------------------------------------------------

CODE_DOMAIN = "Code Repository Understanding"
_LB_TEMPLATE = (
    "What is the correct answer to this question: {question}\nChoices:\n(A) {A}\n(B) {B}\n(C) {C}\n(D) {D}\n\n"
    'Format your response as follows: "The correct answer is (insert answer here)".'
)


@register
class LongBenchV2File(_FileTask):
    """LongBench v2 from its ``data.json``.

    Options: ``path`` (required), ``domain`` (e.g. ``"Code Repository Understanding"``),
    ``difficulty`` (``"easy"``/``"hard"``), ``length`` (``"short"``/``"medium"``/``"long"``).
    The question carries the four options in LongBench's zero-shot wording; the score is
    multiple-choice accuracy."""

    name = "longbench_v2"
    description = "LongBench v2 multiple choice from its data.json"
    fixed_domain: str | None = None

    def __init__(self, path: str | os.PathLike[str] | None = None, domain: str | None = None,
                 difficulty: str | None = None, length: str | None = None, length_window: float = math.sqrt(2)) -> None:
        super().__init__(path, length_window)
        self.domain = self.fixed_domain or domain
        self.difficulty = difficulty
        self.length = length

    def rows(self, length_chars: int = 0) -> list[Item]:
        path = _resolve(self.path, self.name)
        out = []
        seen: set[str] = set()
        for line, row in iter_json_array(path):
            rid = _require(path, line, row, "_id", str)
            domain = _require(path, line, row, "domain", str)
            difficulty = _require(path, line, row, "difficulty", str, optional=True)
            length = _require(path, line, row, "length", str, optional=True)
            if self.domain is not None and domain != self.domain:
                continue
            if self.difficulty is not None and difficulty != self.difficulty:
                continue
            if self.length is not None and length != self.length:
                continue
            question = _require(path, line, row, "question", str)
            choices = {k: _require(path, line, row, f"choice_{k}", str) for k in "ABCD"}
            answer = _require(path, line, row, "answer", str).strip()
            if answer not in choices:
                raise BenchmarkFileError(path, line, "answer", f"expected one of A, B, C, D, got {answer!r}")
            context = _require(path, line, row, "context", str)
            if rid in seen:
                raise BenchmarkFileError(path, line, "_id", f"duplicate id {rid!r}")
            seen.add(rid)
            if not self._fits(len(context), length_chars):
                continue
            out.append(Item(
                id=f"{self.name}-{rid}",
                task=self.name,
                question=_LB_TEMPLATE.format(question=question.strip(), **{k: v.strip() for k, v in choices.items()}),
                context=context,
                answer=answer,
                answer_type="choice",
                length_chars=len(context),
                meta={"choices": choices, "domain": domain, "sub_domain": row.get("sub_domain"),
                      "difficulty": difficulty, "length": length, "line": line},
            ))
        return out

    def score(self, item: Item, prediction: str | None) -> float:
        """Multiple-choice accuracy; LongBench's "The correct answer is (B)" and the usual forms."""
        return choice_accuracy(prediction, item.answer, item.meta.get("choices"))


@register
class LongBenchV2CodeQA(LongBenchV2File):
    """LongBench v2's code-repository domain (the RLM paper's CodeQA)."""

    name = "longbench_v2_codeqa"
    description = "LongBench v2, Code Repository Understanding domain only (CodeQA)"
    fixed_domain = CODE_DOMAIN


# --- BrowseComp-Plus --------------------------------------------------------------------------------

_DOC_LISTS = ("evidence_docs", "gold_docs", "negative_docs")


def _doc_list(path: Path, line: int, row: dict, field: str) -> list[tuple[str, str]]:
    docs = _require(path, line, row, field, list, optional=True) or []
    out = []
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict):
            raise BenchmarkFileError(path, line, f"{field}[{i}]",
                                     f"expected an object with docid and text, got {type(doc).__name__}")
        docid = doc.get("docid")
        text = doc.get("text")
        if not isinstance(docid, (str, int)) or isinstance(docid, bool):
            raise BenchmarkFileError(path, line, f"{field}[{i}].docid", "missing or not a string")
        if not isinstance(text, str):
            raise BenchmarkFileError(path, line, f"{field}[{i}].text", "missing or not a string")
        out.append((str(docid), text))
    return out


@register
class BrowseCompPlusFile(_FileTask):
    """BrowseComp-Plus from the decrypted queries file (``browsecomp_plus_decrypted.jsonl``).

    Each item's context is a dict ``docid -> text`` of the query's evidence, gold and negative
    documents. With ``corpus=`` (the corpus as JSONL: ``docid, text[, url]``) and
    ``length_chars > 0``, seeded corpus documents are added until the context reaches
    ``length_chars`` (the RLM paper's setting of a fixed number of documents per query);
    without it ``length_chars`` only filters. The official grade is an LLM judge; here it is
    exact match after normalization (pass a judge-based scorer in the runner for the official
    number)."""

    name = "browsecomp_plus"
    description = "BrowseComp-Plus queries with their documents (optionally padded from the corpus)"

    def __init__(self, path: str | os.PathLike[str] | None = None, corpus: str | os.PathLike[str] | None = None,
                 length_window: float = math.sqrt(2)) -> None:
        super().__init__(path, length_window)
        self.corpus = None if corpus is None else Path(corpus).expanduser()
        self._offsets: list[tuple[int, int]] | None = None

    def rows(self, length_chars: int = 0) -> list[Item]:
        path = _resolve(self.path, self.name)
        out = []
        seen: set[str] = set()
        for line, row in iter_jsonl(path):
            qid = str(_require(path, line, row, "query_id", (str, int)))
            query = _require(path, line, row, "query", str)
            answer = _require(path, line, row, "answer", str)
            docs: dict[str, str] = {}
            roles: dict[str, list[str]] = {}
            for field in _DOC_LISTS:
                pairs = _doc_list(path, line, row, field)
                roles[field] = [d for d, _ in pairs]
                for docid, text in pairs:
                    docs.setdefault(docid, text)
            if qid in seen:
                raise BenchmarkFileError(path, line, "query_id", f"duplicate id {qid!r}")
            seen.add(qid)
            size = sum(len(k) + len(v) for k, v in docs.items())
            if not self._fits(size, length_chars):
                continue
            out.append(Item(
                id=f"{self.name}-{qid}",
                task=self.name,
                question=query,
                context=docs,
                answer=answer,
                answer_type="exact",
                length_chars=size,
                meta={"query_id": qid, "evidence_docids": roles["evidence_docs"], "gold_docids": roles["gold_docs"],
                      "line": line},
            ))
        return out

    def generate(self, n: int, length_chars: int, seed: int = 0) -> list[Item]:
        if self.corpus is None or not length_chars:
            return super().generate(n, length_chars, seed)
        items = self.rows(0)
        if n < len(items):
            keep = sorted(random.Random(f"{self.name}|{seed}").sample(range(len(items)), n))
            items = [items[i] for i in keep]
        return [self._pad(item, length_chars, seed) for item in items]

    def _corpus_offsets(self) -> list[tuple[int, int]]:
        """(byte offset, line number) of every non-blank corpus line, read once."""
        if self._offsets is None:
            offsets = []
            try:
                with self.corpus.open("rb") as f:  # type: ignore[union-attr]
                    pos = 0
                    for lineno, raw in enumerate(f, 1):
                        if raw.strip():
                            offsets.append((pos, lineno))
                        pos += len(raw)
            except FileNotFoundError:
                raise BenchmarkFileError(self.corpus, None, None, "no such file") from None  # type: ignore[arg-type]
            self._offsets = offsets
        return self._offsets

    def _pad(self, item: Item, length_chars: int, seed: int) -> Item:
        corpus = self.corpus
        assert corpus is not None
        offsets = self._corpus_offsets()
        docs = dict(item.context)
        total = item.length_chars
        order = list(range(len(offsets)))
        random.Random(f"{self.name}|{seed}|{item.id}").shuffle(order)
        with corpus.open("rb") as f:
            for k in order:
                if total >= length_chars:
                    break
                pos, lineno = offsets[k]
                f.seek(pos)
                try:
                    row = json.loads(f.readline().decode("utf-8"))
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise BenchmarkFileError(corpus, lineno, None, f"invalid JSON ({e})") from None
                docid = str(_require(corpus, lineno, row, "docid", (str, int)))
                text = _require(corpus, lineno, row, "text", str)
                if docid in docs:
                    continue
                if total + len(docid) + len(text) > length_chars * self.length_window:
                    continue
                docs[docid] = text
                total += len(docid) + len(text)
        keys = list(docs)
        random.Random(f"{self.name}|order|{seed}|{item.id}").shuffle(keys)
        docs = {k: docs[k] for k in keys}
        return item.model_copy(update={"id": f"{self.name}-L{length_chars}-{item.meta['query_id']}",
                                       "context": docs, "length_chars": total,
                                       "meta": {**item.meta, "padded_from_corpus": True}})

    def score(self, item: Item, prediction: str | None) -> float:
        """Exact match after SQuAD normalization (the benchmark itself grades with an LLM judge)."""
        return exact_match(prediction, item.answer)
