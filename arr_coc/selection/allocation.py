"""Budget allocation: which visual tokens the VLM keeps.

``allocate`` turns per-token relevance (and, for feature-based methods, the
merger's visual features) into the kept token indices of each image, in raster
order. Every method goes through one registry, :data:`SELECTORS`, so a variant
names its method by string and the service, the evaluation and the benchmarks all
share the same code path.

Per-image independence: each image is selected on its own, with its own budget and
seed, so batching never changes a selection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real

import torch

from arr_coc.adaptive import AUTO, IDENTITY, AutoBudget, Calibration, auto_count
from arr_coc.errors import (
    InvalidBudgetError,
    InvalidGridError,
    InvalidRelevanceError,
    InvalidStageError,
    UnknownMethodError,
)
from arr_coc.selection.registry import FEATURE_METHODS, SELECTORS
from arr_coc.selection.types import Grid, SelectionInput
from arr_coc.vocabulary import STAGES

Budget = int | float | AutoBudget


def as_budget(budget: Budget | str) -> Budget:
    """``budget`` with the string ``"auto"`` read as the default :class:`AutoBudget`."""
    return AutoBudget() if budget == AUTO else budget


def resolve_budget(
    budget: Budget | str,
    num_tokens: int,
    relevance: torch.Tensor | None = None,
    calibration: Calibration = IDENTITY,
) -> int:
    """Number of tokens to keep out of ``num_tokens``.

    ``budget`` is a count (int >= 1, capped at ``num_tokens``), a ratio (float in
    ``(0, 1]``, rounded, at least one token) or ``auto`` (:class:`AutoBudget`: as many
    as ``relevance [N]`` needs; without ``relevance`` only checked, giving its lower
    bound). Anything else raises :class:`InvalidBudgetError`.
    """
    budget = as_budget(budget)
    if isinstance(budget, AutoBudget):
        if relevance is None:
            return min(budget.min_tokens, num_tokens)
        return auto_count(relevance, budget, calibration)
    if isinstance(budget, bool):
        raise InvalidBudgetError(f"expected an int >= 1 or a float in (0, 1], got {budget!r}", field="budget")
    if isinstance(budget, Integral):
        if budget < 1:
            raise InvalidBudgetError(f"a token count must be >= 1, got {budget}", field="budget")
        return min(int(budget), num_tokens)
    if isinstance(budget, Real):
        ratio = float(budget)
        if not math.isfinite(ratio) or not 0.0 < ratio <= 1.0:
            raise InvalidBudgetError(f"a ratio must be a finite float in (0, 1], got {budget!r}", field="budget")
        return max(1, min(num_tokens, round(ratio * num_tokens)))
    raise InvalidBudgetError(
        f"expected an int >= 1, a float in (0, 1] or 'auto', got {type(budget).__name__}", field="budget"
    )


def check_stage(stage: str, method: str) -> str:
    """``stage`` if it is known and ``method`` can select at it; :class:`InvalidStageError` otherwise."""
    if stage not in STAGES:
        raise InvalidStageError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}", field="stage")
    if stage == "pre" and method in FEATURE_METHODS:
        raise InvalidStageError(
            f"{method!r} selects from the vision tower's features, so it runs at stage 'post' only", field="stage"
        )
    return stage


def check_method(method: str) -> str:
    """Return ``method`` if the registry knows it, else raise :class:`UnknownMethodError`."""
    if method not in SELECTORS:
        raise UnknownMethodError(f"unknown method {method!r}; known: {', '.join(sorted(SELECTORS))}", field="method")
    return method


def _per_item(value, count: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"{name} has {len(value)} entries for a batch of {count}")
        return list(value)
    return [value] * count


def _as_items(relevance, grid) -> tuple[list[torch.Tensor], list[Grid]]:
    if isinstance(relevance, torch.Tensor) and relevance.dim() == 3:
        maps = list(relevance.flatten(1))
        grids = [tuple(relevance.shape[1:])] * len(maps)
        return maps, grids
    maps = (
        list(relevance) if not isinstance(relevance, torch.Tensor) else list(relevance.reshape(relevance.shape[0], -1))
    )
    single_grid = grid is None or (len(grid) == 2 and all(isinstance(v, Integral) for v in grid))
    grids = [grid] * len(maps) if single_grid else _per_item(grid, len(maps), "grid")
    for i, (scores, g) in enumerate(zip(maps, grids)):
        if g is None:
            g = (1, scores.numel())
        g = tuple(int(v) for v in g)
        if len(g) != 2 or min(g) < 1 or g[0] * g[1] != scores.numel():
            raise InvalidGridError(f"grid {g} does not hold the {scores.numel()} scores of item {i}", field="grid")
        grids[i] = g
    return [m.reshape(-1) for m in maps], grids


def _token_cells(cells: torch.Tensor, grid: Grid) -> torch.Tensor:
    """``[A, H', W']`` or ``[N, A]`` appearance cells of one image as ``[N, A]``; typed error if off-grid or not finite."""
    n = grid[0] * grid[1]
    cells = torch.as_tensor(cells)
    if not cells.is_floating_point() or not torch.isfinite(cells).all():
        raise InvalidRelevanceError("appearance cells must hold finite floats", field="cells")
    if cells.dim() == 3 and tuple(cells.shape[1:]) == tuple(grid):
        return cells.flatten(1).T
    if cells.dim() == 2 and cells.shape[0] == n:
        return cells
    raise InvalidRelevanceError(f"appearance cells {tuple(cells.shape)} do not fit the grid {grid}", field="cells")


def allocate(
    relevance: torch.Tensor | Sequence[torch.Tensor],
    budget: Budget | Sequence[Budget],
    method: str | Sequence[str] = "arr-coc",
    seed: int | Sequence[int] = 0,
    *,
    grid: Grid | Sequence[Grid] | None = None,
    features: Sequence[torch.Tensor] | None = None,
    query: Sequence[torch.Tensor] | None = None,
    question_tokens: Sequence[torch.Tensor] | None = None,
    cells: torch.Tensor | Sequence[torch.Tensor | None] | None = None,
    explore: float | Sequence[float] = 0.0,
    calibration: Calibration = IDENTITY,
) -> list[torch.Tensor]:
    """Kept visual-token indices for each image of a batch.

    Args:
        relevance: ``[B, H', W']``, ``[B, N]`` or a list of ``[N_b]`` / ``[H'_b, W'_b]``
            scores (a list lets images of different sizes share one call).
        budget: a count (int >= 1), a ratio (float in ``(0, 1]``) or ``auto`` (an
            :class:`AutoBudget`: as many as the image's relevance needs), or one per image.
        method: a registered method name, or one per image.
        seed: seed of the ``random`` method, or one per image.
        grid: ``(H', W')`` of each image when ``relevance`` is flat; without it a
            flat map is a single row. ``uniform`` spreads over this grid.
        features: per image ``[N_b, C]`` merger outputs, for feature-based methods.
        query: per image ``[C]`` question embedding, for question-aware methods.
        question_tokens: per image ``[Q_b, C]`` embeddings of the question's tokens,
            for ``cdpruner`` (which raises without them).
        cells: ``[B, A, H', W']`` or per image ``[A, H'_b, W'_b]`` / ``[N_b, A]`` appearance
            cells (the scorer's), the similarity of ``arr-coc``'s coverage term.
        explore: ``arr-coc``'s exploration weight in [0, 1] (the scorer's), or one per image;
            0, or no ``cells``, keeps the relevance top-K.
        calibration: the scorer's :class:`~arr_coc.adaptive.Calibration`, which turns
            relevance into target probabilities and ``coverage`` into a count, for ``auto`` budgets.

    Returns:
        One ``LongTensor [min(K_b, N_b)]`` per image: unique indices in ascending
        (raster) order. Method ``none`` keeps all ``N_b``.
    """
    if isinstance(relevance, (list, tuple)) and grid is None:
        grid = [tuple(m.shape) if m.dim() == 2 else None for m in relevance]
    maps, grids = _as_items(relevance, grid)
    count = len(maps)
    budgets = _per_item(budget, count, "budget")
    methods = [check_method(m) for m in _per_item(method, count, "method")]
    seeds = _per_item(seed, count, "seed")
    feats = _per_item(features, count, "features") if features is not None else [None] * count
    queries = _per_item(query, count, "query") if query is not None else [None] * count
    questions = [None] * count
    if question_tokens is not None:
        questions = _per_item(question_tokens, count, "question_tokens")
    appearances = [None] * count if cells is None else _per_item(list(cells), count, "cells")
    explores = _per_item(explore, count, "explore")

    kept = []
    items = zip(maps, grids, budgets, methods, seeds, feats, queries, questions, appearances, explores)
    for scores, g, b, m, s, f, q, t, a, e in items:
        if m in FEATURE_METHODS and f is None:
            raise ValueError(f"method {m!r} needs the visual features")
        if scores.is_floating_point() and torch.isnan(scores).any():
            raise ValueError("relevance contains NaN")
        if a is not None:
            a = _token_cells(a, g)
        k = resolve_budget(b, scores.numel(), scores.flatten(), calibration)
        item = SelectionInput(
            relevance=scores, grid=g, features=f, query=q, question_tokens=t, cells=a, explore=float(e)
        )
        indices = SELECTORS[m](item, k, int(s))
        kept.append(torch.sort(indices.long().cpu()).values)
    return kept
