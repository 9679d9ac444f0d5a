"""Method ``uniform``: an evenly spaced lattice over the token grid."""

from __future__ import annotations

import math

import torch

from arr_coc.selection.types import SelectionInput


def select_uniform(item: SelectionInput, k: int, seed: int) -> torch.Tensor:
    """An evenly spaced ``rows x cols`` lattice over the 2-D grid, thinned to ``k``.

    The lattice has the grid's aspect ratio and at least ``k`` points; its cells
    are centred in equal bands of rows and columns, so the kept tokens cover the
    whole image rather than the top rows of the flat index.
    """
    height, width = item.grid
    rows = min(height, max(1, round(math.sqrt(k * height / width))))
    cols = min(width, math.ceil(k / rows))
    rows = min(height, max(rows, math.ceil(k / cols)))
    ys = ((torch.arange(rows, dtype=torch.float64) + 0.5) * height / rows).floor().long()
    xs = ((torch.arange(cols, dtype=torch.float64) + 0.5) * width / cols).floor().long()
    lattice = (ys[:, None] * width + xs[None, :]).flatten()
    if lattice.numel() > k:
        keep = torch.linspace(0, lattice.numel() - 1, k, dtype=torch.float64).round().long()
        lattice = lattice[keep]
    return lattice
