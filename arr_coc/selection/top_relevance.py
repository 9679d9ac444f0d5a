"""Method ``arr-coc``: the most relevant tokens by the relevance scorer."""

from __future__ import annotations

import torch

from arr_coc.selection.types import SelectionInput


def select_top_relevance(item: SelectionInput, k: int, seed: int) -> torch.Tensor:
    """The ``k`` most relevant tokens; equal scores keep the lower raster index."""
    if item.relevance is None:
        raise ValueError("method 'arr-coc' needs relevance scores")
    order = torch.sort(item.relevance.detach().float().cpu(), descending=True, stable=True).indices
    return order[:k]
