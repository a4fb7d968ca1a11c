"""Scoring rules of the benchmarks the tasks imitate or load.

Every scorer takes the model's raw prediction (``str`` or ``None``) and the gold answer and
returns a float in ``[0, 1]``. Parsing is forgiving about presentation ("Answer: 42",
"**B**", a JSON list) and strict about content.

- :func:`normalize_answer`, :func:`exact_match`: SQuAD v1.1 normalization and exact match.
- :func:`oolong_numeric`: OOLONG's partial credit for counts, ``0.75 ** |y - y_hat|``.
- :func:`oolong_synth_score`: the OOLONG-synth harness rule for its released answers.
- :func:`pairs_f1`: OOLONG-Pairs, F1 over unordered pairs.
- :func:`choice_accuracy`: multiple-choice accuracy (LongBench v2 extraction plus the usual
  ways of writing a letter).
"""

from __future__ import annotations

import ast
import json
import re
import string
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from typing import Any

__all__ = [
    "normalize_answer",
    "answer_candidates",
    "exact_match",
    "first_number",
    "oolong_numeric",
    "oolong_parse_answer",
    "oolong_gold",
    "oolong_synth_score",
    "parse_pairs",
    "pairs_f1",
    "extract_choice",
    "choice_accuracy",
]

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: Any) -> str:
    """SQuAD v1.1 normalization: lowercase, drop punctuation and the articles a/an/the,
    collapse whitespace (Rajpurkar et al. 2016, the official ``evaluate-v1.1.py``).

    >>> normalize_answer("The  Eiffel-Tower!")
    'eiffeltower'
    """
    s = str(text).lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


_LEAD_INS = re.compile(
    r"^(?:final answer|the answer is|answer is|answer|the correct answer is|result|value)\s*[:=]?\s*",
    re.IGNORECASE,
)


def answer_candidates(prediction: str | None) -> list[str]:
    """The readings of a prediction an exact-match scorer tries: the whole text, the text after
    a lead-in ("Answer:", "The answer is"), after the last ``:`` or ``=``, after the last " is ",
    and the last line. Models wrap short answers in a sentence; each reading is still compared
    exactly, so a wrong value never matches."""
    if prediction is None:
        return []
    text = str(prediction).strip().replace("**", "")
    out = [text]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if lines:
        out.append(lines[-1])
    for cand in list(out):
        out.append(_LEAD_INS.sub("", cand))
        for sep in (":", "=", " is ", " was "):
            if sep in cand:
                out.append(cand.rsplit(sep, 1)[-1])
    seen: list[str] = []
    for cand in out:
        cand = cand.strip().strip("`'\"").strip()
        if cand and cand not in seen:
            seen.append(cand)
    return seen


def exact_match(prediction: str | None, gold: Any) -> float:
    """SQuAD exact match: 1.0 when :func:`normalize_answer` of the prediction equals that of the
    gold answer (or of any gold alternative when ``gold`` is a list), else 0.0. The prediction
    is read as in :func:`answer_candidates`, so "Answer: Paris." matches "Paris"."""
    golds = list(gold) if isinstance(gold, (list, tuple, set)) else [gold]
    wanted = {normalize_answer(g) for g in golds}
    wanted.discard("")
    return float(any(normalize_answer(c) in wanted for c in answer_candidates(prediction)))


_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")


def first_number(text: str | None) -> float | None:
    """The first number written in ``text`` (``1,234`` reads as 1234), or ``None``."""
    if text is None:
        return None
    for match in _NUMBER.finditer(str(text)):
        raw = match.group().replace(",", "")
        try:
            return float(raw)
        except ValueError:
            continue
    return None


def oolong_numeric(prediction: str | None, gold: float | int | str) -> float:
    """OOLONG's numeric rule: ``0.75 ** |y - y_hat|`` (Bertsch et al. 2025, "Oolong: Evaluating
    Long Context Reasoning and Aggregation Capabilities", and its harness). ``y_hat`` is the
    first number in the prediction; no number scores 0. Example: y = 10, y_hat = 8 -> 0.5625."""
    y_hat = first_number(prediction)
    y = first_number(str(gold))
    if y_hat is None or y is None:
        return 0.0
    return float(0.75 ** abs(y - y_hat))


# --- the OOLONG-synth harness rule for its released files ---------------------------------

_COMPARISONS = ("more common", "less common", "same frequency")


def oolong_parse_answer(output: str) -> str:
    """The OOLONG-synth harness's answer parse (``synth_attempt_answer_parse``): without a
    colon, the whole output when shorter than 20 characters, else its last word; with one, the
    text after the last colon with ``*``, ``[`` and ``]`` removed, reduced to a comparison
    phrase when a long candidate contains one."""
    output = output.strip()
    if ":" not in output:
        if len(output) < 20:
            return output
        return output.split()[-1] if output.split() else ""
    candidate = output.rsplit(":", 1)[-1].strip()
    candidate = candidate.replace("*", "").replace("[", "").replace("]", "")
    if len(candidate) >= 20:
        for phrase in _COMPARISONS:
            if phrase in candidate:
                return phrase
    return candidate


def oolong_gold(answer_raw: str) -> Any:
    """Gold value of an OOLONG-synth ``answer`` field: a Python list literal (``['entity']``,
    ``[12]``) whose first element is the answer, or ``[datetime.date(Y, M, D)]``."""
    if "datetime" in answer_raw:
        return datetime.strptime(answer_raw.strip(), "[datetime.date(%Y, %m, %d)]").date()
    value = ast.literal_eval(answer_raw)
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("empty answer list")
        return value[0]
    return value


_DATE_FORMATS = ("%Y-%m-%d", "%b %d, %Y", "%B %d, %Y", "%d %B %Y", "%d %b %Y", "%m/%d/%Y", "%Y/%m/%d")


def _parse_date(text: str) -> date | None:
    text = text.strip().rstrip(".")
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    try:  # the harness uses dateutil; use it when it happens to be installed
        import dateutil.parser  # type: ignore[import-untyped]

        return dateutil.parser.parse(text).date()
    except Exception:
        return None


def oolong_synth_score(prediction: str | None, answer_raw: str, answer_type: str) -> float:
    """Score a prediction against a row of the released OOLONG-synth data, following the
    harness's ``synth_process_response``: parse with :func:`oolong_parse_answer`; an exact
    string match scores 1; a comparison phrase scores 1 when the gold contains it;
    ``ANSWER_TYPE.NUMERIC`` gets ``0.75 ** |y - y_hat|``; ``ANSWER_TYPE.DATE`` compares
    parsed dates. (The harness needs ``int(candidate)``; here the first number of the
    candidate is used, so "12 questions" also scores.)"""
    if prediction is None:
        return 0.0
    gold = oolong_gold(answer_raw)
    candidate = oolong_parse_answer(str(prediction))
    if isinstance(gold, date):
        parsed = _parse_date(candidate)
        return float(parsed == gold)
    if candidate == str(gold):
        return 1.0
    if candidate in _COMPARISONS:
        return float(candidate in str(gold))
    if answer_type == "ANSWER_TYPE.NUMERIC":
        return oolong_numeric(candidate, gold)
    return 0.0


# --- OOLONG-Pairs --------------------------------------------------------------------------

Pair = frozenset


def _norm_id(value: Any) -> str:
    s = str(value).strip().strip("'\"`").strip()
    if re.fullmatch(r"[-+]?\d+(?:\.0+)?", s):
        return str(int(float(s)))
    return s.lower()


def _pair(a: Any, b: Any) -> Pair:
    return frozenset((_norm_id(a), _norm_id(b)))


def _pairs_from_json(value: Any) -> set[Pair] | None:
    if isinstance(value, Mapping):
        for key in ("pairs", "answer", "result"):
            if key in value:
                return _pairs_from_json(value[key])
        return None
    if not isinstance(value, list):
        return None
    out: set[Pair] = set()
    for entry in value:
        if isinstance(entry, (list, tuple)) and len(entry) == 2 and not any(isinstance(x, (list, dict)) for x in entry):
            out.add(_pair(*entry))
        else:
            return None
    return out


_ID = r"[A-Za-z0-9_.\-]+"
_BRACKETED = re.compile(rf"[\(\[\{{]\s*['\"]?({_ID})['\"]?\s*[,;]\s*['\"]?({_ID})['\"]?\s*[\)\]\}}]")
_LINE_PAIR = re.compile(rf"^\W*['\"]?({_ID})['\"]?\s*(?:,|;|-|–|&|\band\b|\s)\s*['\"]?({_ID})['\"]?\W*$", re.IGNORECASE)


def parse_pairs(prediction: str | None | Iterable[Any]) -> set[Pair]:
    """Read a set of unordered pairs from a prediction: a JSON list of 2-element lists
    (``[[1, 2], [3, 4]]``, also under a ``"pairs"`` key), bracketed tuples anywhere in text
    (``(1, 2), (3, 4)``), or one pair per line (``1, 2`` / ``1 - 2`` / ``1 and 2``). Ids are
    compared as strings, numbers without leading zeros or ``.0``."""
    if prediction is None:
        return set()
    if not isinstance(prediction, str):
        parsed = _pairs_from_json(list(prediction))
        return parsed or set()
    text = prediction.strip()
    fence = re.search(r"```(?:json|python)?\s*(.*?)```", text, re.DOTALL)
    if fence:
        text = fence.group(1).strip()
    for loader in (json.loads, ast.literal_eval):
        try:
            parsed = _pairs_from_json(loader(text))
        except Exception:
            parsed = None
        if parsed is not None:
            return parsed
    found = {_pair(a, b) for a, b in _BRACKETED.findall(text)}
    if found:
        return found
    out: set[Pair] = set()
    for line in text.splitlines():
        m = _LINE_PAIR.match(line.strip())
        if m:
            out.add(_pair(m.group(1), m.group(2)))
    return out


def pairs_f1(prediction: str | None | Iterable[Any], gold: Iterable[Any]) -> float:
    """F1 over unordered pairs, the OOLONG-Pairs metric of the Recursive Language Models paper
    (Zhang, Kraska & Khattab 2025): precision and recall of the predicted pair set against the
    gold set; order inside a pair and between pairs is ignored, duplicates count once. Both
    empty scores 1; exactly one empty scores 0."""
    gold_set = {_pair(*p) for p in gold}
    pred_set = parse_pairs(prediction)
    if not gold_set and not pred_set:
        return 1.0
    if not gold_set or not pred_set:
        return 0.0
    hits = len(gold_set & pred_set)
    if hits == 0:
        return 0.0
    precision = hits / len(pred_set)
    recall = hits / len(gold_set)
    return 2 * precision * recall / (precision + recall)


# --- multiple choice -----------------------------------------------------------------------

_CHOICE_PATTERNS = [
    # LongBench v2's own extraction (pred.py), then the usual ways of stating a letter. The
    # letter itself is case-sensitive ("the answer is a list" names no option).
    re.compile(r"the correct answer is\s*\((?-i:([A-D]))\)", re.IGNORECASE),
    re.compile(r"the correct answer is\s*:?\s*(?-i:([A-D]))\b", re.IGNORECASE),
    re.compile(r"\banswer\s*(?:is)?\s*[:=]?\s*\(?(?-i:([A-D]))\)?(?![A-Za-z])", re.IGNORECASE),
    re.compile(r"\boption\s*\(?(?-i:([A-D]))\)?(?![A-Za-z])", re.IGNORECASE),
    re.compile(r"^\s*\(?([A-Da-d])\)?\s*[\.\):]?\s*$"),
    re.compile(r"^\s*\(?([A-D])[\.\):]\s"),
    re.compile(r"^\s*\(([A-D])\)"),
]


def extract_choice(prediction: str | None, choices: Mapping[str, str] | None = None) -> str | None:
    """The letter A-D a prediction picks: LongBench v2's "The correct answer is (B)", then
    "Answer: B", "(B)", a bare "B", "B. text"; failing that, the option whose text the
    prediction equals (normalized), or the single option whose text it contains."""
    if prediction is None:
        return None
    text = str(prediction).replace("*", "").strip()
    for pattern in _CHOICE_PATTERNS:
        m = pattern.search(text)
        if m:
            return m.group(1).upper()
    if choices:
        norm = normalize_answer(text)
        for cand in answer_candidates(text):
            for letter, option in choices.items():
                if normalize_answer(cand) == normalize_answer(option):
                    return letter
        contained = [letter for letter, option in choices.items()
                     if normalize_answer(option) and normalize_answer(option) in norm]
        if len(contained) == 1:
            return contained[0]
    return None


def choice_accuracy(prediction: str | None, gold: str, choices: Mapping[str, str] | None = None) -> float:
    """Multiple-choice accuracy (LongBench v2, Bai et al. 2024: a response is correct when the
    extracted letter equals the gold letter). Accepts "B", "(B)", "Answer: B", "The correct
    answer is (B)" or the option's text; see :func:`extract_choice`."""
    return float(extract_choice(prediction, choices) == str(gold).strip().upper())
