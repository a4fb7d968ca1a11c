"""``browsecomp``: BrowseComp-Plus-style questions over a corpus of synthetic web pages.

The context is a dict ``doc id -> page text``: one page per fictional person, town and
organization (plus prose padding). A question states several constraints whose facts live on
different pages, e.g. "Which person was born in a town founded in 1783 and later founded an
organization headquartered in Dorvale?" needs the person's page (birth town, organization),
the town's page (founding year) and the organization's page (headquarters). Exactly one entity
satisfies the constraints; the answer is its name, scored by exact match after normalization.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from loopagent.evals.base import Item, ItemSlot, Task, check_choices, register
from loopagent.evals.scorers import exact_match
from loopagent.evals.tasks._common import task_filler
from loopagent.validation import check_int

_SYLLABLES = ["mar", "ven", "tal", "or", "kes", "bri", "dun", "ala", "sel", "qua", "rin", "thos", "el",
              "var", "nor", "pel", "ix", "ost", "ryn", "cal", "hul", "ome", "tessa", "lor", "gan", "wim",
              "dra", "fen", "ul", "zar", "cor", "bel", "mir", "ash", "tor", "vel", "sha", "ren"]
_FIRST = ["Orla", "Teodor", "Mirela", "Casimir", "Ysolde", "Bram", "Liesel", "Anselm", "Petra", "Oskar",
          "Ilse", "Matthias", "Rosalind", "Jonah", "Esmé", "Halvard", "Noor", "Ciaran", "Delphine", "Tobias",
          "Ingrid", "Rafael", "Sunniva", "Emeric", "Greta", "Lucan", "Vera", "Anders", "Maelle", "Ivo",
          "Sabine", "Dorian", "Katrin", "Elias", "Freya", "Gideon", "Hana", "Lorcan", "Mina", "Pavel"]
_TOWN_SUFFIX = ["ford", "vale", "mouth", "holm", "wick", "stead", "bury", "haven", "moor", "bridge", "field", "gate"]
_REGIONS = ["Northmarch", "Silverfen", "Coldwater", "Ambervale", "High Rill", "Saltlands", "Greywold",
            "Easterling Coast", "Marrowdale", "Fells", "Southreach", "Lanterne"]
_ORG_KINDS = ["Institute", "Trust", "Foundation", "Society", "Guild", "Observatory", "Press", "Collective",
              "Company", "Academy", "Workshop", "Archive"]
_FIELDS = ["marine biology", "printing", "astronomy", "glassmaking", "folk music", "cartography",
           "bookbinding", "beekeeping", "textile design", "clockmaking", "botany", "shipbuilding"]
_PROFESSIONS = ["cartographer", "violinist", "engineer", "botanist", "journalist", "architect", "chemist",
                "novelist", "photographer", "historian", "sculptor", "economist", "surgeon", "linguist"]


def _word(rng: random.Random, lo: int = 2, hi: int = 3) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(lo, hi))).capitalize()


@dataclass
class _Town:
    name: str
    founded: int
    region: str


@dataclass
class _Org:
    name: str
    kind: str
    field: str
    founded: int
    hq: str
    founder: str = ""


@dataclass
class _Person:
    name: str
    born: int
    town: str
    profession: str
    org: str = ""
    extra: list[str] = field(default_factory=list)


class _World:
    def __init__(self, rng: random.Random, n_docs: int) -> None:
        n_towns = max(2, n_docs // 4)
        n_orgs = max(2, n_docs // 4)
        n_persons = max(n_orgs + 1, n_docs - n_towns - n_orgs)
        used: set[str] = set()

        def unique(make) -> str:
            while True:
                name = make()
                if name not in used:
                    used.add(name)
                    return name

        self.towns = [_Town(unique(lambda: _word(rng) + rng.choice(_TOWN_SUFFIX)), rng.randint(1500, 1950),
                            rng.choice(_REGIONS)) for _ in range(n_towns)]
        town_names = [t.name for t in self.towns]
        self.persons = [_Person(unique(lambda: f"{rng.choice(_FIRST)} {_word(rng)}"), rng.randint(1900, 1980),
                                rng.choice(town_names), rng.choice(_PROFESSIONS)) for _ in range(n_persons)]
        founders = rng.sample(self.persons, n_orgs)
        self.orgs = []
        for founder in founders:
            kind = rng.choice(_ORG_KINDS)
            org = _Org(unique(lambda kind=kind: f"{_word(rng)} {kind}"), kind, rng.choice(_FIELDS),
                       founder.born + rng.randint(22, 44), rng.choice(town_names), founder.name)
            founder.org = org.name
            self.orgs.append(org)
        self.town = {t.name: t for t in self.towns}
        self.org = {o.name: o for o in self.orgs}

    # --- pages ---
    def pages(self) -> list[tuple[str, str]]:
        out = []
        for p in self.persons:
            text = (f"{p.name}\n\n{p.name} (born {p.born} in {p.town}) is a {p.profession}. "
                    f"{p.name.split()[0]} grew up in {p.town} and trained as a {p.profession} before working "
                    f"in several cities.")
            if p.org:
                o = self.org[p.org]
                text += f" In {o.founded}, {p.name.split()[0]} founded the {o.name}."
            out.append(("person", text))
        for t in self.towns:
            out.append(("town", f"{t.name}\n\n{t.name} is a town in the {t.region} region. "
                                f"It was founded in {t.founded}."))
        for o in self.orgs:
            out.append(("org", f"{o.name}\n\nThe {o.name} is a {o.field} {o.kind.lower()} headquartered "
                               f"in {o.hq}."))
        return out


KINDS = ("person_by_town_year_and_hq", "org_by_profession_region_year", "hq_by_founder_town_and_year")


class _NoQuestion(Exception):
    pass


def _question(rng: random.Random, w: _World, kind: str) -> tuple[str, str, dict]:
    founders = [p for p in w.persons if p.org]
    rng.shuffle(founders)
    for p in founders[:50]:
        o = w.org[p.org]
        t = w.town[p.town]
        if kind == "person_by_town_year_and_hq":
            match = [q for q in founders if w.town[q.town].founded == t.founded and w.org[q.org].hq == o.hq]
            if len(match) == 1:
                return (f"Which person was born in a town founded in {t.founded}, and later founded an "
                        f"organization headquartered in {o.hq}? Give the person's full name.", p.name,
                        {"docs": [p.name, t.name, o.name], "constraints": {"town_founded": t.founded, "org_hq": o.hq}})
        elif kind == "org_by_profession_region_year":
            match = [q for q in founders if q.profession == p.profession and q.born == p.born
                     and w.town[q.town].region == t.region]
            if len(match) == 1:
                return (f"What is the name of the organization founded by a {p.profession} who was born in "
                        f"{p.born} in a town of the {t.region} region?", o.name,
                        {"docs": [p.name, t.name], "constraints": {"profession": p.profession, "born": p.born,
                                                                   "region": t.region}})
        elif kind == "hq_by_founder_town_and_year":
            match = [q for q in founders if q.town == p.town and w.org[q.org].founded == o.founded]
            if len(match) == 1:
                return (f"An organization was founded in {o.founded} by a person born in {p.town}. In which "
                        f"town is that organization headquartered?", o.hq,
                        {"docs": [p.name, o.name], "constraints": {"founder_town": p.town, "org_founded": o.founded}})
    raise _NoQuestion(kind)


@register
class BrowseComp(Task):
    """Multi-constraint questions over synthetic web pages; the answer combines 2-3 pages."""

    name = "browsecomp"
    description = "BrowseComp-Plus-style QA over a dict of synthetic web pages; answers combine facts from 2-3 pages"

    def __init__(self, kinds: tuple[str, ...] | list[str] | None = None, page_chars: int = 1000) -> None:
        self.kinds = check_choices(kinds, KINDS, "browsecomp question kinds")
        self.page_chars = check_int(page_chars, "page_chars", minimum=200)

    def make_item(self, rng: random.Random, slot: ItemSlot) -> Item:
        length_chars = slot.length_chars
        filler = task_filler(self.name, slot.seed)
        n_docs = max(8, round(length_chars / self.page_chars))
        for _attempt in range(20):
            world = _World(rng, n_docs)
            kinds = list(self.kinds)
            rng.shuffle(kinds)
            for kind in kinds:
                try:
                    question, answer, meta = _question(rng, world, kind)
                    break
                except _NoQuestion:
                    continue
            else:
                continue
            break
        else:
            raise RuntimeError("browsecomp: could not make a question with a unique answer")
        pages = world.pages()
        rng.shuffle(pages)
        ids = rng.sample(range(100000, 1000000), len(pages))
        keys = [f"doc{i}" for i in ids]
        base = sum(len(k) + len(text) for k, (_, text) in zip(keys, pages))
        spare = max(0, length_chars - base)
        weights = [rng.random() + 0.2 for _ in pages]
        total = sum(weights)
        context: dict[str, str] = {}
        for key, (_, text), wgt in zip(keys, pages, weights):
            pad = int(spare * wgt / total)
            # Filler overshoots by half a sentence on average; aim that much lower.
            pad -= 2 + int(filler.mean / 2)
            context[key] = text + ("\n\n" + filler.text(rng, pad).strip() if pad > 40 else "")
        title_to_doc = {text.split("\n", 1)[0]: key for key, (_, text) in zip(keys, pages)}
        meta["doc_ids"] = [title_to_doc[title] for title in meta.pop("docs")]
        meta["kind"] = kind
        meta["n_docs"] = len(context)
        return slot.item(question=question, context=context, answer=answer, answer_type="exact", meta=meta)

    def score(self, item: Item, prediction: str | None) -> float:
        """Exact match after SQuAD normalization (BrowseComp-Plus grades with an LLM judge; the
        synthetic answers are names, for which normalized exact match is the same test)."""
        return exact_match(prediction, item.answer)
