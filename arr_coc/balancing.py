"""The tension balancer: how much each way of knowing counts, per image and per cell.

Input: the three score maps stacked ``[B, 3, H', W']`` (information, perspectival,
participatory) and the query ``[B, D]``. Each map is summarized by its mean, max and
standard deviation, its score-weighted centroid (row, column), and its layout on a
coarse 4x4 grid; with the projected query these give per-image mixing logits
``[B, 3]``. A 3x3 convolution over the maps adds per-cell logits, so the mix can
change across the image. Relevance is the softmax-weighted sum of the maps, a convex
combination, hence in [0, 1].

The balancer also weighs exploiting what is relevant against exploring what else
is there: :meth:`TensionBalancer.exploration` gives per image a weight ``[B]`` in
[0, 1] from the same summaries and query, which the ``arr-coc`` selection uses to
discount tokens like ones it already kept (``arr_coc.selection.relevance_coverage``).
High when the maps do not single out one object (a shape the scorer cannot pin
down), low when they do.

Untrained behaviour: the output layers start at zero, so every weight is 1/3, the
relevance is the plain mean of the three scores and the exploration weight is the
``explore`` it was built with.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from arr_coc.texture import position_channels

NUM_SCORES = 3
LAYOUT = 4  # coarse layout grid side
SUMMARY_DIM = NUM_SCORES * (3 + 2 + LAYOUT * LAYOUT)


def summarize(scores: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H', W'] -> [B, 63]``: per map mean, max, std, centroid (y, x), 4x4 layout."""
    batch, maps, rows, cols = scores.shape
    flat = scores.flatten(2)  # [B, 3, N]
    positions = position_channels((rows, cols), scores.device, scores.dtype)[:2].flatten(1)  # [2, N]
    mass = flat.sum(dim=2, keepdim=True).clamp_min(1e-6)
    centroid = torch.einsum("bmn,cn->bmc", flat, positions) / mass  # [B, 3, 2]
    layout = F.adaptive_avg_pool2d(scores, (LAYOUT, LAYOUT)).flatten(2)  # [B, 3, 16]
    stats = torch.stack([flat.mean(2), flat.amax(2), flat.std(2, unbiased=False)], dim=2)  # [B, 3, 3]
    return torch.cat([stats, centroid, layout], dim=2).flatten(1)


class TensionBalancer(nn.Module):
    """Mix ``[B, 3, H', W']`` score maps into relevance ``[B, H', W']`` given query ``[B, D]``."""

    def __init__(
        self, query_dim: int, hidden: int = 32, query_features: int = 16, explore: float | None = None
    ) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(query_dim)
        self.query_proj = nn.Linear(query_dim, query_features)
        self.mixer = nn.Sequential(
            nn.Linear(SUMMARY_DIM + query_features, hidden),
            nn.GELU(),
            nn.Linear(hidden, NUM_SCORES),
        )
        self.local = nn.Conv2d(NUM_SCORES, NUM_SCORES, 3, padding=1)
        for layer in (self.mixer[-1], self.local):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.explore: nn.Sequential | None = None
        if explore is not None:  # None: a scorer from before the head, which explores with a constant
            self.explore = nn.Sequential(
                nn.Linear(SUMMARY_DIM + query_features, hidden), nn.GELU(), nn.Linear(hidden, 1)
            )
            nn.init.zeros_(self.explore[-1].weight)
            nn.init.constant_(self.explore[-1].bias, math.log(explore / (1.0 - explore)))

    def context(self, scores: torch.Tensor, query_embeds: torch.Tensor) -> torch.Tensor:
        """``[B, 63 + Q]``: the maps' summaries and the projected query, what the per-image heads read."""
        query = self.query_proj(self.query_norm(query_embeds.to(scores.dtype)))
        return torch.cat([summarize(scores), query], dim=1)

    def exploration(self, context: torch.Tensor) -> torch.Tensor:
        """``[B]`` in (0, 1): how far ``arr-coc`` trades relevance for coverage, from :meth:`context`."""
        return torch.sigmoid(self.exploration_logits(context))

    def exploration_logits(self, context: torch.Tensor) -> torch.Tensor:
        """``[B]`` logits of :meth:`exploration` (what its training fits)."""
        if self.explore is None:
            raise ValueError("this balancer has no exploration head")
        return self.explore(context)[:, 0]

    def weights(
        self, scores: torch.Tensor, query_embeds: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mixing weights ``[B, 3, H', W']``, non-negative, summing to 1 over dim 1."""
        context = self.context(scores, query_embeds) if context is None else context
        global_logits = self.mixer(context)  # [B, 3]
        logits = global_logits[:, :, None, None] + self.local(scores)
        return logits.softmax(dim=1)

    def forward(self, scores: torch.Tensor, query_embeds: torch.Tensor) -> torch.Tensor:
        return (self.weights(scores, query_embeds) * scores).sum(dim=1)
