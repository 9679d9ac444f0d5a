"""Method ``arr-coc``: relevance balanced against coverage, the tension ARR-COC's balancer weighs.

A greedy max-marginal-relevance selection. Each step keeps the token with the
largest gain

    gain_i = r_i * (1 - e * max_{j kept} s_ij)

where ``r [N]`` is the scorer's relevance, ``e`` in [0, 1] the balancer's
exploration weight for this image and ``s_ij`` in [0, 1] the similarity of two
tokens: a Gaussian kernel on their appearance cells (CIE-LAB colour of the token's
pixels, ``[N, C]``) times a Gaussian kernel on their grid positions. Tokens of an
object already kept are discounted, so a small budget reaches one token of each
relevant object before it spends a second token on any of them; a question whose
object the scorer is sure of (``e`` near 0) keeps its top tokens. The similarity
needs no vision-tower features, so the method selects at both stages.

``e = 0`` (or no appearance cells) is exactly the relevance top-K. Ties keep the
lower raster index. The greedy runs for the first :data:`GREEDY_PICKS` tokens; the
rest of a larger budget are the best by the gain those picks leave (by then every
object the scorer rates is reached, and a 1344x1344 image at 50 % would otherwise
take over 1000 sequential steps). Cost: ``min(k, 64)`` steps of ``O(N C)`` and one
sort, on the device of the inputs with no host synchronisation inside the loop.
"""

from __future__ import annotations

import math

import torch

from arr_coc.errors import InvalidRelevanceError
from arr_coc.selection.types import SelectionInput

COLOUR_SIGMA = 0.15
"""Width of the appearance kernel, in the cells' [0, 1] colour units (two palette colours differ by 0.25-1)."""
POSITION_SIGMA = 0.1
"""Width of the position kernel, as a share of the grid's mean side (1.6 tokens on a 16 x 16 grid)."""
GREEDY_PICKS = 64
"""Tokens chosen one by one; the rest of a budget are the top of the gain that remains."""


def token_positions(grid: tuple[int, int], device=None) -> torch.Tensor:
    """``[N, 2]`` float (row, column) of each token of ``grid``, in tokens, raster order."""
    rows, cols = grid
    yy, xx = torch.meshgrid(
        torch.arange(rows, device=device, dtype=torch.float32),
        torch.arange(cols, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([yy.flatten(), xx.flatten()], dim=1)


def top_relevance(relevance: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` most relevant of ``relevance [N]``; equal scores keep the lower raster index."""
    return torch.sort(relevance, descending=True, stable=True).indices[:k]


def select_relevance_coverage(item: SelectionInput, k: int, seed: int) -> torch.Tensor:
    """``k`` tokens by greedy relevance x coverage (module docstring), in the order they are picked.

    The picks for ``k`` are the first ``k`` of the picks for any larger budget, so
    ``k = N`` gives the order in which the method keeps every token. ``seed`` is unused.
    """
    if item.relevance is None:
        raise ValueError("method 'arr-coc' needs relevance scores")
    relevance = item.relevance.detach().float().reshape(-1)
    n = relevance.numel()
    explore = float(item.explore)
    if not 0.0 <= explore <= 1.0:  # NaN fails too
        raise InvalidRelevanceError(f"an exploration weight in [0, 1], got {item.explore!r}", field="explore")
    if explore == 0.0 or item.cells is None:
        return top_relevance(relevance.cpu(), k)
    cells = item.cells.detach().float().reshape(n, -1).to(relevance.device)
    positions = token_positions(item.grid, relevance.device)
    position_sigma = POSITION_SIGMA * math.sqrt(item.grid[0] * item.grid[1])
    cells = cells / (math.sqrt(2.0) * COLOUR_SIGMA)
    positions = positions / (math.sqrt(2.0) * position_sigma)
    covered = torch.zeros(n, device=relevance.device)
    taken = torch.zeros(n, dtype=torch.bool, device=relevance.device)
    greedy = min(k, GREEDY_PICKS)
    chosen = torch.empty(greedy, dtype=torch.long, device=relevance.device)
    for step in range(greedy):
        gain = (relevance * (1.0 - explore * covered)).masked_fill(taken, -math.inf)
        pick = torch.argmax(gain)
        chosen[step] = pick
        taken[pick] = True
        distance = ((cells - cells[pick]) ** 2).sum(dim=1) + ((positions - positions[pick]) ** 2).sum(dim=1)
        covered = torch.maximum(covered, torch.exp(-distance))
    if k > greedy:
        gain = (relevance * (1.0 - explore * covered)).masked_fill(taken, -math.inf)
        rest = torch.sort(gain, descending=True, stable=True).indices[: k - greedy]
        chosen = torch.cat([chosen, rest])
    return chosen.cpu()
