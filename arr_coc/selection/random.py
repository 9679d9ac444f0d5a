"""Method ``random``: a seeded random subset (published benchmarks find it a strong floor)."""

from __future__ import annotations

import torch

from arr_coc.selection.types import SelectionInput


def select_random(item: SelectionInput, k: int, seed: int) -> torch.Tensor:
    """``k`` tokens drawn without replacement from a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(item.num_tokens, generator=generator)[:k]
