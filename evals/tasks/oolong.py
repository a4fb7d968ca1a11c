"""``oolong`` and ``oolong_pairs``: aggregation over labelled records (OOLONG, OOLONG-Pairs).

The context is a header and one record per line::

    Date: Mar 04, 2023 || User: 48213 || Instance: Has anyone tried the new risotto place?

Every instance is about exactly one topic of a small label set (weather, sports, food, travel,
music, money): its text names exactly one term of that topic's lexicon (:data:`LEXICON`), so
the label is latent but derivable. ``with_labels=True`` appends ``|| Label: <label>`` to every
line (OOLONG's ``context_window_text_with_labels``).

``oolong`` asks counting questions (how many instances have label X, which label is most or
least common, is X more or less common than Y, how many X instances did user U post, which
user posted the most X); numbers score ``0.75 ** |y - y_hat|``, the rest exact match.
``oolong_pairs`` asks for all pairs of users meeting a condition on their labels; F1 over pairs.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from datetime import date, timedelta

from loopagent.evals.base import Item, ItemSlot, Task, check_choices, register
from loopagent.evals.scorers import exact_match, first_number, oolong_numeric, oolong_parse_answer, pairs_f1
from loopagent.evals.tasks._common import fit_to_length
from loopagent.validation import check_int

LABELS = ("weather", "sports", "food", "travel", "music", "money")

LEXICON: dict[str, tuple[str, ...]] = {
    "weather": ("thunderstorm", "heatwave", "forecast", "snowfall", "drizzle", "humidity", "hailstorm",
                "cold front", "rainfall", "sea fog", "frost warning", "monsoon"),
    "sports": ("penalty shootout", "marathon", "tennis final", "relay race", "goalkeeper", "ski jump",
               "boxing match", "league table", "free throw", "batting order", "cycling stage", "rowing regatta"),
    "food": ("sourdough", "risotto", "dumplings", "lentil soup", "pancakes", "curry", "cheesecake",
             "noodle bar", "omelette", "barbecue", "pastry", "fish stew"),
    "travel": ("train ticket", "passport", "hostel", "boarding pass", "layover", "road trip",
               "ferry crossing", "visa application", "hotel booking", "luggage", "night bus", "airport lounge"),
    "music": ("guitar solo", "album", "drum kit", "concert", "playlist", "violin", "choir rehearsal",
              "vinyl record", "jazz trio", "piano lesson", "music festival", "bass line"),
    "money": ("mortgage", "savings account", "tax return", "stock portfolio", "credit card", "pension",
              "invoice", "household budget", "bank loan", "exchange rate", "insurance premium", "payslip"),
}

_TEMPLATES = (
    "Has anyone got advice about the {x}?",
    "I keep thinking about that {x} from last week.",
    "Can someone explain how the {x} works around here?",
    "Honestly the {x} was better than I expected.",
    "Where do people usually go for a decent {x}?",
    "Quick question about my {x}, any tips?",
    "Not sure how I feel about the {x} today.",
    "Just told my cousin about the {x}.",
    "Why is everyone talking about the {x} all of a sudden?",
    "Does the {x} always take this long?",
    "Finally sorted out the {x}, what a relief.",
    "Is it just me or was the {x} a bit strange?",
    "Looking for someone to chat with about the {x}.",
    "My neighbour will not stop going on about the {x}.",
)
_ADJECTIVES = ("", "", "", "new ", "local ", "weekend ", "usual ", "latest ", "famous ", "awful ", "lovely ")

_START = date(2022, 1, 1)
_DATES = [(_START + timedelta(days=d)).strftime("%b %d, %Y") for d in range(3 * 365)]


def header(n_records: int, with_labels: bool) -> str:
    labels = ", ".join(LABELS)
    text = (f"The following lines contain {n_records} messages posted by users. Each line has a date, "
            f"a user id and the message (the instance). Every instance is about exactly one of these "
            f"topics, which is its label: {labels}.")
    if with_labels:
        text += " Each line also states the instance's label."
    return text + "\n\n"


def _line(when: str, user: int, label: str, text: str, with_labels: bool) -> str:
    line = f"Date: {when} || User: {user} || Instance: {text}"
    if with_labels:
        line += f" || Label: {label}"
    return line + "\n"


class _Records:
    """Seeded records: (date, user, label, text), built in bulk for speed."""

    def __init__(self, rng: random.Random, length_chars: int, weights: dict[str, float], with_labels: bool) -> None:
        est = max(4, int(length_chars / 86 * 1.15) + 8)
        n_users = max(6, min(400, est // 15))
        self.users = sorted(rng.sample(range(10000, 100000), n_users))
        self.with_labels = with_labels
        labels = list(weights)
        picked = rng.choices(labels, weights=[weights[lab] for lab in labels], k=est)
        templates = rng.choices(_TEMPLATES, k=est)
        adjectives = rng.choices(_ADJECTIVES, k=est)
        dates = rng.choices(_DATES, k=est)
        users = rng.choices(self.users, k=est)
        self.rows = [
            (d, u, lab, t.format(x=a + rng.choice(LEXICON[lab])))
            for d, u, lab, t, a in zip(dates, users, picked, templates, adjectives)
        ]

    def make_row(self, rng: random.Random, user: int, label: str) -> tuple[str, int, str, str]:
        return (rng.choice(_DATES), user, label,
                rng.choice(_TEMPLATES).format(x=rng.choice(_ADJECTIVES) + rng.choice(LEXICON[label])))

    def trim(self, rng: random.Random, length_chars: int, extra: list[tuple[str, int, str, str]] = ()) -> None:
        """Keep the records that fit ``length_chars`` together with ``extra`` rows, then insert
        those at seeded positions (rows placed by hand: the rare labels of ``oolong_pairs``)."""
        extra = list(extra)
        lines = [self.line(r) for r in self.rows]
        head = len(header(len(self.rows) + len(extra), self.with_labels))
        budget = length_chars - head - sum(len(self.line(r)) for r in extra)
        self.rows = self.rows[: len(fit_to_length(lines, budget))]
        for row in extra:
            self.rows.insert(rng.randrange(len(self.rows) + 1), row)

    def line(self, row: tuple[str, int, str, str]) -> str:
        return _line(*row, self.with_labels)

    def text(self) -> str:
        return header(len(self.rows), self.with_labels) + "".join(self.line(r) for r in self.rows)


def _format_hint(kind: str) -> str:
    return {"number": "Give your final answer in the form 'Answer: <number>'.",
            "label": "Give your final answer in the form 'Label: <label>'.",
            "user": "Give your final answer in the form 'User: <user id>'.",
            "comparison": "Give your final answer in the form 'Answer: more common', 'Answer: less common' or "
                          "'Answer: same frequency'."}[kind]


_COMPARISONS = ("more common", "less common", "same frequency")


@register
class Oolong(Task):
    """OOLONG-style counting and aggregation over labelled records."""

    name = "oolong"
    description = "OOLONG-style aggregation: count, rank and compare latent labels of dated user records"
    KINDS = ("count_label", "most_common", "least_common", "relative", "user_count", "user_most")

    def __init__(self, with_labels: bool = False, kinds: tuple[str, ...] | list[str] | None = None) -> None:
        self.with_labels = with_labels
        self.kinds = check_choices(kinds, self.KINDS, "oolong question kinds")

    def make_item(self, rng: random.Random, slot: ItemSlot) -> Item:
        weights = {lab: rng.uniform(0.3, 1.0) for lab in LABELS}
        records = _Records(rng, slot.length_chars, weights, self.with_labels)
        records.trim(rng, slot.length_chars)
        rows = records.rows
        counts = Counter(r[2] for r in rows)
        by_user: dict[int, Counter] = defaultdict(Counter)
        for _, user, label, _ in rows:
            by_user[user][label] += 1
        kind = rng.choice(self.kinds)
        label = rng.choice(LABELS)
        question, answer, qtype = self._question(rng, kind, label, counts, by_user)
        if question is None:  # a tie made the requested kind ambiguous
            kind = "count_label"
            question, answer, qtype = self._question(rng, kind, label, counts, by_user)
        context = records.text()
        return slot.item(
            question=question,
            context=context,
            answer=answer,
            answer_type=qtype,
            meta={"kind": kind, "labels": list(LABELS), "n_records": len(rows), "n_users": len(by_user),
                  "with_labels": self.with_labels},
        )

    def _question(self, rng: random.Random, kind: str, label: str, counts: Counter,
                  by_user: dict[int, Counter]) -> tuple[str | None, object, str]:
        full = {lab: counts.get(lab, 0) for lab in LABELS}
        ranked = sorted(full.items(), key=lambda kv: -kv[1])
        if kind == "count_label":
            q = f"How many instances in the data have the label '{label}'? " + _format_hint("number")
            return q, full[label], "numeric"
        if kind in ("most_common", "least_common"):
            order = ranked if kind == "most_common" else ranked[::-1]
            if order[0][1] == order[1][1]:
                return None, None, "exact"
            word = "most" if kind == "most_common" else "least"
            q = f"Which label is the {word} common among all instances in the data? " + _format_hint("label")
            return q, order[0][0], "exact"
        if kind == "relative":
            other = rng.choice([lab for lab in LABELS if lab != label])
            a, b = full[label], full[other]
            ans = "more common" if a > b else "less common" if a < b else "same frequency"
            q = (f"In the data, is the label '{label}' more common, less common, or the same frequency "
                 f"as the label '{other}'? " + _format_hint("comparison"))
            return q, ans, "exact"
        if kind == "user_count":
            user = rng.choice(sorted(by_user))
            q = (f"How many instances with the label '{label}' did user {user} post? " + _format_hint("number"))
            return q, by_user[user][label], "numeric"
        if kind == "user_most":
            per_user = sorted(((c[label], u) for u, c in by_user.items()), reverse=True)
            if not per_user or per_user[0][0] == 0 or (len(per_user) > 1 and per_user[0][0] == per_user[1][0]):
                return None, None, "exact"
            q = f"Which user posted the most instances with the label '{label}'? " + _format_hint("user")
            return q, str(per_user[0][1]), "exact"
        raise ValueError(kind)

    def score(self, item: Item, prediction: str | None) -> float:
        """Numbers: OOLONG's ``0.75 ** |y - y_hat|`` on the answer after the last colon (else the
        first number of the prediction). Labels, users, comparisons: exact match; a comparison
        also counts when the prediction names only the gold phrase (OOLONG's rule)."""
        if prediction is None:
            return 0.0
        if item.answer_type == "numeric":
            candidate = oolong_parse_answer(prediction)
            if first_number(candidate) is None:
                candidate = prediction
            return oolong_numeric(candidate, item.answer)
        if exact_match(prediction, item.answer):
            return 1.0
        if item.answer in _COMPARISONS:
            named = {p for p in _COMPARISONS if p in prediction.lower()}
            return float(named == {item.answer})
        return 0.0


# --- OOLONG-Pairs ---------------------------------------------------------------------------

PAIR_CONDITIONS = ("both", "both_and", "cross", "both_not")


@register
class OolongPairs(Task):
    """OOLONG-Pairs-style: list every pair of users meeting a condition on their labels."""

    name = "oolong_pairs"
    description = "OOLONG-Pairs-style: all pairs of user ids meeting a label condition; F1 over pairs"

    def __init__(self, with_labels: bool = False, conditions: tuple[str, ...] | list[str] | None = None,
                 max_users_per_label: int = 10) -> None:
        self.with_labels = with_labels
        self.conditions = check_choices(conditions, PAIR_CONDITIONS, "oolong_pairs conditions")
        self.max_users = check_int(max_users_per_label, "max_users_per_label", minimum=3)

    def make_item(self, rng: random.Random, slot: ItemSlot) -> Item:
        length_chars = slot.length_chars
        x, y = rng.sample(LABELS, 2)
        common = {lab: rng.uniform(0.3, 1.0) for lab in LABELS if lab not in (x, y)}
        # The two rare labels are placed by hand on a few users, which bounds the answer size.
        records = _Records(rng, length_chars, common, self.with_labels)
        users = records.users
        k = min(len(users), self.max_users)
        has_x = rng.sample(users, rng.randint(3, k))
        overlap = rng.sample(has_x, rng.randint(2, len(has_x)))
        others = [u for u in users if u not in has_x]
        has_y = overlap + rng.sample(others, min(len(others), rng.randint(1, k)))
        extra = [records.make_row(rng, user, label)
                 for label, owners in ((x, has_x), (y, has_y)) for user in owners
                 for _ in range(rng.randint(1, 2))]
        records.trim(rng, length_chars, extra)
        have: dict[int, set[str]] = defaultdict(set)
        for _, user, label, _ in records.rows:
            have[user].add(label)
        condition = rng.choice(self.conditions)
        question, pairs = self._pairs(condition, x, y, sorted(have), have)
        context = records.text()
        return slot.item(
            question=question,
            context=context,
            answer=[list(p) for p in pairs],
            answer_type="pairs",
            meta={"condition": condition, "label_x": x, "label_y": y, "n_pairs": len(pairs),
                  "n_records": len(records.rows), "n_users": len(have), "with_labels": self.with_labels},
        )

    @staticmethod
    def _pairs(condition: str, x: str, y: str, users: list[int],
               have: dict[int, set[str]]) -> tuple[str, list[tuple[int, int]]]:
        def ok(a: int, b: int) -> bool:
            ha, hb = have[a], have[b]
            if condition == "both":
                return x in ha and x in hb
            if condition == "both_and":
                return x in ha and y in ha and x in hb and y in hb
            if condition == "cross":
                return (x in ha and y in hb) or (y in ha and x in hb)
            if condition == "both_not":
                return x in ha and x in hb and y not in ha and y not in hb
            raise ValueError(condition)

        wording = {
            "both": f"both users have at least one instance with the label '{x}'",
            "both_and": f"each of the two users has at least one instance with the label '{x}' "
                        f"and at least one with the label '{y}'",
            "cross": f"one user has at least one instance with the label '{x}' "
                     f"and the other user has at least one instance with the label '{y}'",
            "both_not": f"both users have at least one instance with the label '{x}' "
                        f"and neither user has any instance with the label '{y}'",
        }[condition]
        pairs = [(a, b) for i, a in enumerate(users) for b in users[i + 1:] if ok(a, b)]
        question = (f"List all pairs of user IDs such that {wording}. List each pair once, as "
                    f"(smaller id, larger id), separated by commas, e.g. (10234, 56789), (11111, 22222). "
                    f"If no pair qualifies, answer 'none'.")
        return question, pairs

    def score(self, item: Item, prediction: str | None) -> float:
        """F1 over unordered pairs (OOLONG-Pairs); see :func:`loopagent.evals.scorers.pairs_f1`."""
        return pairs_f1(prediction, item.answer)
