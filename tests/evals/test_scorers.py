"""Scorers against the published rules and their examples."""

from __future__ import annotations

import pytest

from loopagent.evals.scorers import (
    choice_accuracy,
    exact_match,
    extract_choice,
    normalize_answer,
    oolong_numeric,
    oolong_parse_answer,
    oolong_synth_score,
    pairs_f1,
    parse_pairs,
)


@pytest.mark.parametrize(
    "raw, normalized",
    [
        # SQuAD v1.1 evaluate script: lowercase, strip punctuation, drop a/an/the, squeeze spaces.
        ("Denver Broncos", "denver broncos"),
        ("The Broncos", "broncos"),
        ("  the   Eiffel Tower.  ", "eiffel tower"),
        ("An apple a day", "apple day"),
        ("Theatre of the absurd", "theatre of absurd"),  # "the" only as a word
        ("U.S.A.", "usa"),
        ("rock 'n' roll!", "rock n roll"),
    ],
)
def test_squad_normalization(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_exact_match_reads_answers_wrapped_in_text():
    assert exact_match("Paris", "paris") == 1.0
    assert exact_match("The answer is Paris.", "Paris") == 1.0
    assert exact_match("Answer: **Paris**", "Paris") == 1.0
    assert exact_match("x7 = 512", "512") == 1.0
    assert exact_match("Paris, France", "Paris") == 0.0
    assert exact_match("Lyon", ["Paris", "Lyon"]) == 1.0
    assert exact_match(None, "Paris") == 0.0
    assert exact_match("", "Paris") == 0.0


@pytest.mark.parametrize(
    "prediction, gold, score",
    [
        ("8", 10, 0.5625),           # the OOLONG rule: 0.75 ** |10 - 8|
        ("Answer: 10", 10, 1.0),
        ("Answer: 12", 10, 0.5625),
        ("about 11 of them", 10, 0.75),
        ("1,000", 1000, 1.0),
        ("no idea", 10, 0.0),
        (None, 10, 0.0),
    ],
)
def test_oolong_numeric(prediction, gold, score):
    assert oolong_numeric(prediction, gold) == pytest.approx(score)


def test_oolong_harness_parse_and_score():
    assert oolong_parse_answer("Label: **entity**") == "entity"
    assert oolong_parse_answer("entity") == "entity"
    assert oolong_parse_answer("after a long look the label is clearly entity") == "entity"
    assert oolong_synth_score("Answer: entity", "['entity']", "ANSWER_TYPE.LABEL") == 1.0
    assert oolong_synth_score("Answer: location", "['entity']", "ANSWER_TYPE.LABEL") == 0.0
    assert oolong_synth_score("Answer: 10", "[10]", "ANSWER_TYPE.NUMERIC") == 1.0
    assert oolong_synth_score("Answer: 12", "[10]", "ANSWER_TYPE.NUMERIC") == pytest.approx(0.75**2)
    assert oolong_synth_score("Answer: entity is more common than location", "['more common than']",
                              "ANSWER_TYPE.COMPARISON") == 1.0
    assert oolong_synth_score("Answer: entity is less common than location", "['more common than']",
                              "ANSWER_TYPE.COMPARISON") == 0.0
    assert oolong_synth_score("Date: 2023-03-19", "[datetime.date(2023, 3, 19)]", "ANSWER_TYPE.DATE") == 1.0
    assert oolong_synth_score("Date: Mar 19, 2023", "[datetime.date(2023, 3, 19)]", "ANSWER_TYPE.DATE") == 1.0
    assert oolong_synth_score("Date: Mar 20, 2023", "[datetime.date(2023, 3, 19)]", "ANSWER_TYPE.DATE") == 0.0
    assert oolong_synth_score(None, "[10]", "ANSWER_TYPE.NUMERIC") == 0.0


GOLD = [[1, 2], [3, 4]]


@pytest.mark.parametrize(
    "prediction, score",
    [
        ("(1, 2), (3, 4)", 1.0),
        ("(4, 3), (2, 1)", 1.0),                 # order inside and between pairs is ignored
        ("[[2, 1], [3, 4]]", 1.0),               # JSON
        ('{"pairs": [["1", "2"], ["3", "4"]]}', 1.0),
        ("```json\n[[1, 2], [3, 4]]\n```", 1.0),
        ("1 - 2\n3 and 4", 1.0),                 # one pair per line
        ("(1, 2), (1, 2), (3, 4)", 1.0),         # duplicates count once
        ("(1, 2)", 2 / 3),                       # P = 1, R = 1/2
        ("(1, 2), (5, 6)", 0.5),                 # P = 1/2, R = 1/2
        ("(1, 2), (3, 4), (5, 6), (7, 8)", 2 / 3),  # P = 1/2, R = 1
        ("(5, 6)", 0.0),
        ("none", 0.0),
        (None, 0.0),
    ],
)
def test_pairs_f1(prediction, score):
    assert pairs_f1(prediction, GOLD) == pytest.approx(score)


def test_pairs_f1_empty_gold():
    assert pairs_f1("none", []) == 1.0
    assert pairs_f1("(1, 2)", []) == 0.0


def test_parse_pairs_normalizes_ids():
    assert parse_pairs("('00012', '7'), (7.0, 12)") == {frozenset({"12", "7"})}
    assert parse_pairs([[1, 2]]) == {frozenset({"1", "2"})}


CHOICES = {"A": "a list", "B": "a dict", "C": "a tuple", "D": "None"}


@pytest.mark.parametrize(
    "prediction, letter",
    [
        ("B", "B"),
        ("(B)", "B"),
        ("b", "B"),
        ("Answer: B", "B"),
        ("The answer is B.", "B"),
        ("The correct answer is (B)", "B"),   # LongBench v2's own format
        ("**The correct answer is (B)**", "B"),
        ("B) a dict", "B"),
        ("I would pick option C because ...", "C"),
        ("a dict", "B"),                      # the option's text
        ("It returns a dict.", "B"),
        ("The answer is a list or a dict", None),  # lowercase "a" is not a letter; two options named
        ("", None),
        (None, None),
    ],
)
def test_extract_choice(prediction, letter):
    assert extract_choice(prediction, CHOICES) == letter


def test_choice_accuracy():
    assert choice_accuracy("The correct answer is (C)", "C") == 1.0
    assert choice_accuracy("The correct answer is (C)", "A") == 0.0
    assert choice_accuracy("a tuple", "C", CHOICES) == 1.0
    assert choice_accuracy(None, "C") == 0.0
