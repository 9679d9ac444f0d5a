"""Which visual tokens the VLM keeps: budgets, the selection methods (one file each) and ``allocate``.

``allocate(relevance, budget, method, ...)`` -> kept indices per image, raster order.
Methods are looked up by name in :data:`SELECTORS` (``registry.py``).
"""

from arr_coc.selection.allocation import Budget, allocate, as_budget, check_method, check_stage, resolve_budget
from arr_coc.selection.registry import FEATURE_METHODS, SELECTORS
from arr_coc.selection.types import Grid, SelectionInput, Selector

__all__ = [
    "Budget",
    "FEATURE_METHODS",
    "Grid",
    "SELECTORS",
    "SelectionInput",
    "Selector",
    "allocate",
    "as_budget",
    "check_method",
    "check_stage",
    "resolve_budget",
]
