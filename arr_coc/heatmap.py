"""Relevance maps as pictures: a colour heatmap blended over the image.

``overlay(image, relevance [H', W'], kept=[K] indices)`` returns an RGB PIL image of
the input's size; kept tokens are drawn at full strength, dropped ones dimmed.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# Anchor colours of a perceptually ordered dark-to-bright map (black, purple, orange, yellow).
_ANCHORS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)


def colorize(values: np.ndarray) -> np.ndarray:
    """``[H, W]`` floats in [0, 1] -> ``[H, W, 3]`` uint8 colours."""
    position = np.clip(np.nan_to_num(values), 0.0, 1.0) * (len(_ANCHORS) - 1)
    low = np.floor(position).astype(int).clip(0, len(_ANCHORS) - 2)
    frac = (position - low)[..., None]
    colours = _ANCHORS[low] * (1 - frac) + _ANCHORS[low + 1] * frac
    return colours.round().astype(np.uint8)


def overlay(
    image: Image.Image,
    relevance: torch.Tensor,
    kept: torch.Tensor | None = None,
    alpha: float = 0.55,
    dimming: float = 0.35,
) -> Image.Image:
    """Blend the colourized ``[H', W']`` relevance over ``image``; dim tokens not in ``kept``."""
    rows, cols = relevance.shape
    heat = colorize(relevance.detach().float().cpu().numpy())
    cells = Image.fromarray(heat).resize(image.size, Image.Resampling.NEAREST)
    blended = Image.blend(image.convert("RGB"), cells, alpha)
    if kept is None:
        return blended
    mask = np.full(rows * cols, dimming)
    mask[kept.cpu().numpy()] = 1.0
    mask_image = Image.fromarray((mask.reshape(rows, cols) * 255).astype(np.uint8)).resize(
        image.size, Image.Resampling.NEAREST
    )
    shade = np.asarray(mask_image, dtype=np.float64)[..., None] / 255.0
    return Image.fromarray((np.asarray(blended, dtype=np.float64) * shade).round().astype(np.uint8))


def kept_mask(grid: tuple[int, int], kept: torch.Tensor) -> np.ndarray:
    """``[H', W']`` bool mask of the kept tokens."""
    mask = np.zeros(grid[0] * grid[1], dtype=bool)
    mask[kept.cpu().numpy()] = True
    return mask.reshape(grid)
