"""The selection methods by name: one explicit table, no registration by import side effect."""

from __future__ import annotations

from arr_coc.selection.cdpruner import select_cdpruner
from arr_coc.selection.divprune import select_divprune
from arr_coc.selection.none import select_all
from arr_coc.selection.random import select_random
from arr_coc.selection.top_relevance import select_top_relevance
from arr_coc.selection.types import Selector
from arr_coc.selection.uniform import select_uniform

SELECTORS: dict[str, Selector] = {
    "none": select_all,
    "uniform": select_uniform,
    "random": select_random,
    "arr-coc": select_top_relevance,
    "divprune": select_divprune,
    "cdpruner": select_cdpruner,
}
"""``selector(item, k, seed) -> LongTensor [k]`` of unique indices, by method name."""

FEATURE_METHODS: frozenset[str] = frozenset({"divprune", "cdpruner"})
"""Methods that select from the vision tower's merged features (stage ``post`` only)."""
