"""Calibration of a trained scorer for ``auto`` budgets, from maps it scored and the tokens that mattered.

:func:`fit_scorer_calibration` fits Platt scaling of relevance to "is a target
token" (:func:`arr_coc.adaptive.fit_calibration`) and the coverage table that turns
``coverage`` into a probability threshold through the order in which ``arr-coc``'s
selection keeps each image's tokens (:func:`arr_coc.adaptive.fit_coverage_table`),
so ``coverage`` means the share of those tokens ``auto`` keeps, as served. The
targets are the task's masks (``arr-coc calibrate``) or, for a distilled scorer,
its teacher's top tokens: a calibration with no labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from arr_coc.adaptive import Calibration, fit_calibration, fit_coverage_table
from arr_coc.selection import SelectionInput
from arr_coc.selection.relevance_coverage import select_relevance_coverage


def fit_scorer_calibration(
    maps: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    cells: Sequence[torch.Tensor],
    explore: Sequence[float],
) -> Calibration:
    """The calibration of ``maps`` (``[N]`` relevance each) against ``targets`` (``[N]`` float 0/1 each).

    cells: ``[3, H', W']`` appearance cells per map; explore: the scorer's exploration weight per map.
    """
    platt = fit_calibration(torch.cat(list(maps)), torch.cat(list(targets)))
    orders = [
        select_relevance_coverage(
            SelectionInput(relevance=m, grid=tuple(c.shape[1:]), cells=c.flatten(1).T, explore=e), m.numel(), 0
        )
        for m, c, e in zip(maps, cells, explore)
    ]
    return platt.model_copy(update={"coverage_table": fit_coverage_table(list(maps), list(targets), platt, orders)})
