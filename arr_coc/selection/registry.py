"""The selection methods by name: one explicit table, no registration by import side effect."""

from __future__ import annotations

from arr_coc.selection.cdpruner import select_cdpruner
from arr_coc.selection.divprune import select_divprune
from arr_coc.selection.none import select_all
from arr_coc.selection.random import select_random
from arr_coc.selection.relevance_coverage import select_relevance_coverage
from arr_coc.selection.types import Selector
from arr_coc.selection.uniform import select_uniform
from arr_coc.vocabulary import FEATURE_METHODS

SELECTORS: dict[str, Selector] = {
    "none": select_all,
    "arr-coc": select_relevance_coverage,
    "uniform": select_uniform,
    "random": select_random,
    "divprune": select_divprune,
    "cdpruner": select_cdpruner,
}
"""``selector(item, k, seed) -> LongTensor [k]`` of unique indices, one per name of
:data:`arr_coc.vocabulary.METHODS`, in its order."""

__all__ = ["FEATURE_METHODS", "SELECTORS"]
