"""Training signal of the relevance scorer: relevance ``[B, H', W']`` vs target mask ``[B, H', W']``.

Two terms, each averaged per image then over the batch:

- class-balanced binary cross-entropy: the mean BCE over the object's tokens
  and the mean BCE over the other tokens, averaged (an object covers ~5-10 % of
  the tokens, so plain BCE would learn "nothing is relevant");
- pairwise ranking: ``softplus((r_neg - r_pos) / T)`` over every (object token,
  other token) pair, a smooth version of "every object token outranks every
  other token", which is what a top-K selection needs.

Images whose target mask is empty or full add nothing to the ranking term.

A scorer distilled from the VLM (:mod:`arr_coc.distill`) learns a soft teacher
map instead of a mask: :func:`teacher_loss` ranks by the teacher's whole order
(pairs weighted by the teacher's gap) and applies the balanced BCE to the
teacher's top tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_EPS = 1e-6


def balanced_bce(relevance: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per image ``[B]``: 0.5 * (mean BCE on target tokens + mean BCE on the others)."""
    r = relevance.flatten(1).clamp(_EPS, 1 - _EPS)
    t = target.flatten(1).to(r.dtype)
    bce = F.binary_cross_entropy(r, t, reduction="none")
    positives = (bce * t).sum(1) / t.sum(1).clamp_min(1)
    negatives = (bce * (1 - t)).sum(1) / (1 - t).sum(1).clamp_min(1)
    return 0.5 * (positives + negatives)


def pairwise_ranking(relevance: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per image ``[B]``: mean ``softplus((r_neg - r_pos) / temperature)`` over all (pos, neg) pairs."""
    r = relevance.flatten(1)
    t = target.flatten(1).bool()
    gaps = (r[:, None, :] - r[:, :, None]) / temperature  # [B, pos i, neg j] = r_j - r_i
    pairs = (t[:, :, None] & ~t[:, None, :]).to(r.dtype)
    return (F.softplus(gaps) * pairs).sum((1, 2)) / pairs.sum((1, 2)).clamp_min(1)


def relevance_loss(
    relevance: torch.Tensor,
    target: torch.Tensor,
    *,
    bce_weight: float = 1.0,
    rank_weight: float = 1.0,
    temperature: float = 0.1,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Scalar loss and its parts ``{"bce", "rank"}`` (batch means, as floats)."""
    bce = balanced_bce(relevance, target).mean()
    rank = pairwise_ranking(relevance, target, temperature).mean()
    loss = bce_weight * bce + rank_weight * rank
    return loss, {"bce": float(bce.detach()), "rank": float(rank.detach())}


def teacher_top(teacher: torch.Tensor, share: float) -> torch.Tensor:
    """``[B, H', W']`` bool: each image's ``ceil(share * N)`` highest-rated tokens of a soft ``teacher``."""
    flat = teacher.flatten(1)
    k = max(1, math.ceil(share * flat.shape[1]))
    top = torch.zeros_like(flat, dtype=torch.bool)
    top.scatter_(1, flat.topk(k, dim=1).indices, True)
    return top.view_as(teacher)


def soft_ranking(relevance: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per image ``[B]``: ``softplus((r_j - r_i) / temperature)`` over pairs the teacher orders ``t_i > t_j``,
    each weighted by the teacher's gap ``t_i - t_j`` (so near-ties matter little), normalized by the weights."""
    r = relevance.flatten(1)
    t = teacher.flatten(1).to(r.dtype)
    gaps = (r[:, None, :] - r[:, :, None]) / temperature  # [B, i, j] = r_j - r_i
    weights = (t[:, :, None] - t[:, None, :]).clamp_min(0)  # [B, i, j] = t_i - t_j where positive
    return (F.softplus(gaps) * weights).sum((1, 2)) / weights.sum((1, 2)).clamp_min(_EPS)


def teacher_loss(
    relevance: torch.Tensor,
    teacher: torch.Tensor,
    *,
    top_share: float = 0.1,
    bce_weight: float = 1.0,
    rank_weight: float = 1.0,
    temperature: float = 0.1,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Scalar loss against a soft teacher ``[B, H', W']`` in [0, 1] and its parts ``{"bce", "rank"}``.

    ``rank``: :func:`soft_ranking` over the teacher's whole order; ``bce``: class-balanced BCE on the
    teacher's top ``top_share`` of the tokens (what a small budget has to find).
    """
    bce = balanced_bce(relevance, teacher_top(teacher, top_share)).mean()
    rank = soft_ranking(relevance, teacher, temperature).mean()
    loss = bce_weight * bce + rank_weight * rank
    return loss, {"bce": float(bce.detach()), "rank": float(rank.detach())}
