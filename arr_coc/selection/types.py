"""What a selection method sees of one image, and the signature every method has."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Grid = tuple[int, int]


@dataclass(frozen=True)
class SelectionInput:
    """Everything a selector may look at for one image.

    relevance: ``[N]`` float scores, higher = keep (``None`` for methods that ignore it).
    grid: ``(H', W')`` with ``H' * W' == N``.
    features: ``[N, C]`` visual features after the merger, or ``None``.
    query: ``[C]`` question embedding in the feature space (the mean of
        ``question_tokens``), or ``None``.
    question_tokens: ``[Q, C]`` embeddings of the question's ``Q`` tokens in the
        feature space (``cdpruner``), or ``None``.
    cells: ``[N, A]`` appearance of each token from its pixels (the scorer's
        :func:`arr_coc.knowing.appearance_cells`), for ``arr-coc``'s coverage term, or ``None``.
    explore: ``arr-coc``'s exploration weight in [0, 1] (the scorer's balancer sets it;
        0 = the relevance top-K).
    """

    relevance: torch.Tensor | None
    grid: Grid
    features: torch.Tensor | None = None
    query: torch.Tensor | None = None
    question_tokens: torch.Tensor | None = None
    cells: torch.Tensor | None = None
    explore: float = 0.0

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]


Selector = Callable[[SelectionInput, int, int], torch.Tensor]
"""``selector(item, k, seed) -> LongTensor [k]`` of unique indices (any order)."""
