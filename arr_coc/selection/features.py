"""The merger outputs as the feature-based methods (``divprune``, ``cdpruner``) use them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from arr_coc.selection.types import SelectionInput


def unit_features(item: SelectionInput, dtype: torch.dtype) -> torch.Tensor:
    """``[N, C]`` features scaled to unit length."""
    if item.features is None:
        raise ValueError("this method needs the visual features")
    features = item.features.detach().to(dtype).reshape(item.num_tokens, -1)
    return F.normalize(features, dim=-1)
