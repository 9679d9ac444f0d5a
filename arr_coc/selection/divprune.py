"""Method ``divprune`` (DivPrune, arXiv 2503.02175; reference code github.com/vbdi/divprune):
the kept set should solve the max-min diversity problem: maximize the smallest
pairwise cosine distance ``d_ij = 1 - cos(f_i, f_j)`` among kept tokens. Greedy
farthest-point selection, as in the reference: the first pick is the token whose
nearest other token is farthest, ``argmax_i min_{j != i} d_ij``; then repeatedly the
token whose distance to its nearest kept token is largest. Ties go to the lowest
index. The reference builds the whole ``N x N`` distance matrix; here the first pick
computes it in blocks of :data:`CHUNK_ROWS` rows and the greedy steps one row per
pick, so extra memory is ``O(CHUNK_ROWS * N)``; time ``O(N^2 C + k N C)``.
"""

from __future__ import annotations

import torch

from arr_coc.selection.features import unit_features
from arr_coc.selection.types import SelectionInput

CHUNK_ROWS = 1024
"""Rows of the ``N x N`` distance matrix that ``divprune``'s first pick holds at once."""


def nearest_other_distance(unit: torch.Tensor, chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """``[N]``: cosine distance of each unit row of ``unit [N, C]`` to its nearest other row.

    Computed ``chunk_rows`` rows at a time, so memory is ``O(chunk_rows * N)``.
    """
    n = unit.shape[0]
    nearest = torch.empty(n, dtype=unit.dtype, device=unit.device)
    for start in range(0, n, chunk_rows):
        stop = min(start + chunk_rows, n)
        distance = 1.0 - unit[start:stop] @ unit.T  # [rows, N]
        rows = torch.arange(stop - start, device=unit.device)
        distance[rows, rows + start] = float("inf")
        nearest[start:stop] = distance.min(dim=1).values
    return nearest


def select_divprune(item: SelectionInput, k: int, seed: int) -> torch.Tensor:
    """``k`` tokens by greedy max-min cosine diversity over ``item.features [N, C]``."""
    features = unit_features(item, torch.float32)
    n = features.shape[0]
    if k >= n:
        return torch.arange(n)
    current = torch.argmax(nearest_other_distance(features))
    nearest = torch.full((n,), float("inf"), device=features.device)
    chosen = torch.empty(k, dtype=torch.long, device=features.device)
    for step in range(k):
        chosen[step] = current
        nearest = torch.minimum(nearest, 1.0 - features @ features[current])
        nearest[chosen[: step + 1]] = -float("inf")
        current = torch.argmax(nearest)
    return chosen.cpu()
