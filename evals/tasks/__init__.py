"""Seeded task generators; importing this package registers them.

===============  ==========================================================  ===========
name             what                                                        scoring
===============  ==========================================================  ===========
``sniah``        RULER single needle (7-digit value for a key)               exact
``oolong``       OOLONG aggregation over labelled dated records              0.75^|y-ŷ| / exact
``oolong_pairs`` OOLONG-Pairs: user pairs meeting a label condition          pair F1
``multihop``     variable chains scattered through prose                     exact
``codeqa``       multiple choice on the Python standard library's source     choice
``browsecomp``   multi-constraint QA over a dict of synthetic web pages      exact
===============  ==========================================================  ===========

Every generator is deterministic in ``(seed, length_chars, index)``, makes contexts of about
``length_chars`` characters (8K to 10M and more), and its gold answer can be recomputed from
the context alone.
"""

from loopagent.evals.tasks import browsecomp, codeqa, multihop, oolong, sniah  # noqa: F401
from loopagent.evals.tasks.browsecomp import BrowseComp
from loopagent.evals.tasks.codeqa import CodeQA
from loopagent.evals.tasks.multihop import MultiHop
from loopagent.evals.tasks.oolong import Oolong, OolongPairs
from loopagent.evals.tasks.sniah import SNIAH

__all__ = ["SNIAH", "Oolong", "OolongPairs", "MultiHop", "CodeQA", "BrowseComp"]
