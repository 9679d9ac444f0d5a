"""Three ways of knowing what in an image matters, each a score map ``[B, H', W']`` in [0, 1].

- information (propositional): how much is going on in and around a cell, the
  entropy of a Gaussian fit to its lightness and colour variation;
- perspectival: what stands out, centre-surround contrast at two neighbourhood
  scales and against the whole image (Itti-Koch style salience);
- participatory: what matters for this question, a small learned network over
  the texture cells whose output is matched against the query embedding.

The first two have no parameters (information is on an absolute scale, salience is
rescaled per image; a constant image scores 0 on both); the third is a sigmoid.
No statistic crosses images.
"""

from __future__ import annotations

import math

import kornia
import torch
import torch.nn.functional as F
from torch import nn

from arr_coc.texture import NUM_CHANNELS

# Texture channels (see texture.py) that describe what a cell looks like, with the
# affine map that brings each to about [0, 1].
APPEARANCE_CHANNELS = (3, 4, 11, 7)  # lightness, green-red, blue-yellow, edge magnitude
_APPEARANCE_SHIFT = torch.tensor([0.0, 1.0, 1.0, 0.0])
_APPEARANCE_SCALE = torch.tensor([1.0, 0.5, 0.5, 1.0])
CONTRAST_CHANNEL = 12
ENTROPY_NOISE_FLOOR = 0.02  # lightness std below which a region counts as flat (~5/255)
SURROUND_SIGMAS = (1.0, 3.0)  # in cells


def appearance(texture: torch.Tensor) -> torch.Tensor:
    """``[B, 13, H', W'] -> [B, 4, H', W']``: lightness, a*, b*, edge magnitude in [0, 1]."""
    x = texture[:, list(APPEARANCE_CHANNELS)]
    shift = _APPEARANCE_SHIFT.to(x)[None, :, None, None]
    scale = _APPEARANCE_SCALE.to(x)[None, :, None, None]
    return ((x + shift) * scale).clamp(0.0, 1.0)


def appearance_cells(texture: torch.Tensor) -> torch.Tensor:
    """``[B, 13, H', W'] -> [B, 3, H', W']``: each token's colour (lightness, a*, b* in [0, 1]).

    What ``arr-coc``'s coverage term compares tokens by (``arr_coc.selection.relevance_coverage``).
    """
    return appearance(texture)[:, :3]


def rescale_per_image(scores: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Min-max rescale each ``[H', W']`` map of ``[B, H', W']`` to [0, 1]; flat maps -> 0."""
    flat = scores.flatten(1)
    low = flat.amin(dim=1)[:, None, None]
    span = flat.amax(dim=1)[:, None, None] - low
    return torch.where(span > eps, (scores - low) / span.clamp_min(eps), torch.zeros_like(scores))


def information_score(texture: torch.Tensor) -> torch.Tensor:
    """Local entropy, ``[B, 13, H', W'] -> [B, H', W']`` in [0, 1].

    The entropy of a Gaussian is ``0.5 log(2 pi e sigma^2)``: it grows with the log of
    the variance. Here ``sigma^2`` is the lightness variance inside the cell (texture
    channel 12, squared) plus the variance of lightness, a* and b* over the cell's
    3x3 neighbourhood, all on [0, 1] scales, so ``sigma^2 <= 1``. The score is
    ``log(1 + sigma^2 / floor^2) / log(1 + 1 / floor^2)`` with a noise floor of
    ``ENTROPY_NOISE_FLOOR``: 0 for a flat region, 1 at the most varied possible cell,
    on the same absolute scale for every image.
    """
    colours = appearance(texture)[:, :3]  # [B, 3, H', W'] lightness, a*, b* in [0, 1]
    pool = dict(kernel_size=3, stride=1, padding=1, count_include_pad=False)
    spread = (F.avg_pool2d(colours**2, **pool) - F.avg_pool2d(colours, **pool) ** 2).clamp_min(0.0).sum(dim=1)
    variance = texture[:, CONTRAST_CHANNEL] ** 2 + spread
    floor = ENTROPY_NOISE_FLOOR**2
    return (torch.log1p(variance / floor) / math.log1p(1.0 / floor)).clamp(0.0, 1.0)


def perspectival_score(texture: torch.Tensor) -> torch.Tensor:
    """Centre-surround salience, ``[B, 13, H', W'] -> [B, H', W']`` in [0, 1].

    The absolute difference of each appearance feature from its Gaussian surround
    (sigma 1 and 3 cells) and from the image mean, summed, then rescaled per image.
    """
    features = appearance(texture)
    salience = (features - features.mean(dim=(2, 3), keepdim=True)).abs().sum(dim=1)
    for sigma in SURROUND_SIGMAS:
        size = 2 * math.ceil(2 * sigma) + 1
        surround = kornia.filters.gaussian_blur2d(features, (size, size), (sigma, sigma), border_type="replicate")
        salience = salience + (features - surround).abs().sum(dim=1)
    return rescale_per_image(salience)


class ShapeStem(nn.Module):
    """What a token's pixels look like, at a finer resolution than its texture cell.

    Input: the image box-filtered to ``pixels_per_cell`` pixels per token side
    (``arr_coc.texture.texture_and_pixels``). Two stride-2 convolutions and one
    patchifying convolution bring it to one ``channels``-vector per token. A texture
    cell averages its token's pixels, so a star and a circle of one colour have the
    same cell; the stem sees their outlines.

    Shapes: pixels ``[B, 3, sH', sW']`` in [0, 1] (``s = pixels_per_cell``) -> ``[B, channels, H', W']``.
    """

    def __init__(self, channels: int = 16, pixels_per_cell: int = 8, width: int = 16) -> None:
        super().__init__()
        if pixels_per_cell < 4 or pixels_per_cell % 4:
            raise ValueError(f"the stem needs a multiple of 4 pixels per cell, got {pixels_per_cell}")
        self.pixels_per_cell = pixels_per_cell
        patch = pixels_per_cell // 4
        self.layers = nn.Sequential(
            nn.Conv2d(3, width, 4, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width * 2, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(width * 2, channels, patch, stride=patch),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.layers((pixels - 0.5) / 0.25)


class ParticipatoryScorer(nn.Module):
    """Question-conditioned relevance of each cell, learned.

    A three-layer convolutional encoder (receptive field 7x7 cells, enough to see a
    small object's outline) embeds each token from its texture cell and, with a
    :class:`ShapeStem`, from its pixels; the query embedding is normalized and
    projected to the same space; the score is the sigmoid of their scaled dot product
    plus a query-independent prior per cell.

    Shapes: texture ``[B, 13, H', W']``, query ``[B, D]``, stem features
    ``[B, S, H', W']`` (or ``None`` without a stem) -> ``[B, H', W']`` in [0, 1].
    """

    def __init__(self, query_dim: int, hidden: int = 32, embed_dim: int = 32, stem_channels: int = 0) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(NUM_CHANNELS + stem_channels, hidden, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=2, dilation=2),
            nn.GELU(),
            nn.Conv2d(hidden, embed_dim + 1, 1),
        )
        self.query_norm = nn.LayerNorm(query_dim)
        self.query_proj = nn.Linear(query_dim, embed_dim)
        self.embed_dim = embed_dim

    def forward(
        self, texture: torch.Tensor, query_embeds: torch.Tensor, stem: torch.Tensor | None = None
    ) -> torch.Tensor:
        cells = texture if stem is None else torch.cat([texture, stem.to(texture.dtype)], dim=1)
        encoded = self.encoder(cells)  # [B, E + 1, H', W']
        cells, prior = encoded[:, :-1], encoded[:, -1]
        query = self.query_proj(self.query_norm(query_embeds.to(texture.dtype)))  # [B, E]
        match = torch.einsum("behw,be->bhw", cells, query) / math.sqrt(self.embed_dim)
        return torch.sigmoid(match + prior)
