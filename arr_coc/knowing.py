"""Three ways of knowing what in an image matters, each a score map ``[B, H', W']`` in [0, 1].

- information (propositional): how much is going on around a cell, the Shannon
  entropy of lightness, colour and edge strength over its 3x3 neighbourhood;
- perspectival: what stands out, centre-surround contrast at two neighbourhood
  scales and against the whole image (Itti-Koch style salience);
- participatory: what matters for this question, a small learned network over
  the texture cells whose output is matched against the query embedding.

The first two have no parameters and are rescaled per image to [0, 1] (a constant
image scores 0 everywhere); the third is a sigmoid. No statistic crosses images.
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
ENTROPY_BINS = 8
SURROUND_SIGMAS = (1.0, 3.0)  # in cells


def appearance(texture: torch.Tensor) -> torch.Tensor:
    """``[B, 13, H', W'] -> [B, 4, H', W']``: lightness, a*, b*, edge magnitude in [0, 1]."""
    x = texture[:, list(APPEARANCE_CHANNELS)]
    shift = _APPEARANCE_SHIFT.to(x)[None, :, None, None]
    scale = _APPEARANCE_SCALE.to(x)[None, :, None, None]
    return ((x + shift) * scale).clamp(0.0, 1.0)


def rescale_per_image(scores: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Min-max rescale each ``[H', W']`` map of ``[B, H', W']`` to [0, 1]; flat maps -> 0."""
    flat = scores.flatten(1)
    low = flat.amin(dim=1)[:, None, None]
    span = (flat.amax(dim=1)[:, None, None] - low)
    return torch.where(span > eps, (scores - low) / span.clamp_min(eps), torch.zeros_like(scores))


def information_score(texture: torch.Tensor) -> torch.Tensor:
    """Neighbourhood entropy, ``[B, 13, H', W'] -> [B, H', W']`` in [0, 1].

    Each appearance feature is soft-binned into ``ENTROPY_BINS`` triangular bins;
    the bin occupancy over the 3x3 neighbourhood of a cell is a distribution whose
    entropy, divided by ``log(ENTROPY_BINS)``, is averaged over the features.
    """
    features = appearance(texture)  # [B, 4, H', W']
    centres = (torch.arange(ENTROPY_BINS, device=texture.device, dtype=texture.dtype) + 0.5) / ENTROPY_BINS
    features = features.clamp(centres[0].item(), centres[-1].item())
    membership = (1.0 - (features[:, :, None] - centres[None, None, :, None, None]).abs() * ENTROPY_BINS).clamp_min(0)
    batch, feats, bins, rows, cols = membership.shape  # [B, 4, 8, H', W'], sums to 1 over bins
    occupancy = F.avg_pool2d(
        membership.reshape(batch, feats * bins, rows, cols), 3, stride=1, padding=1, count_include_pad=False
    ).reshape(batch, feats, bins, rows, cols)
    entropy = -(occupancy * occupancy.clamp_min(1e-12).log()).sum(dim=2) / math.log(ENTROPY_BINS)
    return entropy.mean(dim=1).clamp(0.0, 1.0)


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


class ParticipatoryScorer(nn.Module):
    """Question-conditioned relevance of each cell, learned.

    A three-layer convolutional encoder (receptive field 7x7 cells, enough to see a
    small object's outline) embeds each texture cell; the query embedding is
    normalized and projected to the same space; the score is the sigmoid of their
    scaled dot product plus a query-independent prior per cell.

    Shapes: texture ``[B, 13, H', W']``, query ``[B, D]`` -> ``[B, H', W']`` in [0, 1].
    """

    def __init__(self, query_dim: int, hidden: int = 32, embed_dim: int = 32) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(NUM_CHANNELS, hidden, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=2, dilation=2),
            nn.GELU(),
            nn.Conv2d(hidden, embed_dim + 1, 1),
        )
        self.query_norm = nn.LayerNorm(query_dim)
        self.query_proj = nn.Linear(query_dim, embed_dim)
        self.embed_dim = embed_dim

    def forward(self, texture: torch.Tensor, query_embeds: torch.Tensor) -> torch.Tensor:
        encoded = self.encoder(texture)  # [B, E + 1, H', W']
        cells, prior = encoded[:, :-1], encoded[:, -1]
        query = self.query_proj(self.query_norm(query_embeds.to(texture.dtype)))  # [B, E]
        match = torch.einsum("behw,be->bhw", cells, query) / math.sqrt(self.embed_dim)
        return torch.sigmoid(match + prior)
