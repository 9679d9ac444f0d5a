"""Method ``none``: keep every token (the all-token baseline)."""

from __future__ import annotations

import torch

from arr_coc.selection.types import SelectionInput


def select_all(item: SelectionInput, k: int, seed: int) -> torch.Tensor:
    """Keep every token (``k`` is ignored: the method defines no budget)."""
    return torch.arange(item.num_tokens)
