"""Two published feature-based pruning baselines, registered with ``allocate``.

Both work on the merger outputs ``features [N, C]`` of one image (the vectors the
LLM would see), are deterministic (``seed`` is unused) and return ``k`` unique
indices; ``allocate`` sorts them into raster order.

``divprune`` (DivPrune, arXiv 2503.02175): the kept set should solve the
max-min diversity problem: maximize the smallest pairwise cosine distance
``1 - cos(f_i, f_j)`` among kept tokens. Greedy farthest-point selection: start
from the token farthest from the mean feature direction, then repeatedly add the
token whose distance to its nearest kept token is largest. ``O(k N C)`` time,
``O(N)`` extra memory (no ``N x N`` matrix).

``cdpruner`` (CDPruner, arXiv 2506.10967): a determinantal point process whose
kernel couples question relevance with feature similarity,
``L = diag(q) S diag(q)`` with ``S_ij = cos(f_i, f_j)`` and quality
``q_i = exp(RELEVANCE_WEIGHT * r_i)``, ``r_i`` the cosine of ``f_i`` with the
question embedding min-max normalized to [0, 1] over the image (the scorer's
relevance when no question embedding is given). Greedy MAP inference with
incremental Cholesky updates (Chen et al., NeurIPS 2018; kernel rows computed on
the fly, so memory is ``O(k N)``, never ``N x N``) picks, at each step,
the token with the largest gain in ``log det L_S``. ``S`` has rank at most ``C``;
once the kernel cannot grow the determinant any more, the remaining picks are the
most relevant unpicked tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from arr_coc.attending import SelectionInput, register

RELEVANCE_WEIGHT = 1.0
_EXHAUSTED = 1e-10  # residual variance below which the DPP kernel has no new direction


def _unit_features(item: SelectionInput, dtype: torch.dtype) -> torch.Tensor:
    if item.features is None:
        raise ValueError("this method needs the visual features")
    features = item.features.detach().to(dtype).reshape(item.num_tokens, -1)
    return F.normalize(features, dim=-1)


@register("divprune", needs_features=True)
def select_divprune(item: SelectionInput, k: int, seed: int) -> torch.Tensor:
    """``k`` tokens by greedy max-min cosine diversity over ``item.features [N, C]``."""
    features = _unit_features(item, torch.float32)
    n = features.shape[0]
    if k >= n:
        return torch.arange(n)
    mean = F.normalize(features.mean(dim=0), dim=0)
    current = torch.argmin(features @ mean)
    nearest = torch.full((n,), float("inf"), device=features.device)
    chosen = torch.empty(k, dtype=torch.long, device=features.device)
    for step in range(k):
        chosen[step] = current
        nearest = torch.minimum(nearest, 1.0 - features @ features[current])
        nearest[chosen[: step + 1]] = -float("inf")
        current = torch.argmax(nearest)
    return chosen.cpu()


def _question_relevance(item: SelectionInput, features: torch.Tensor) -> torch.Tensor:
    """``[N]`` relevance in [0, 1]: cosine with the question embedding, min-max normalized."""
    if item.query is not None:
        query = F.normalize(item.query.detach().to(features).reshape(-1), dim=0)
        raw = features @ query
    elif item.relevance is not None:
        raw = item.relevance.detach().to(features).reshape(-1)
    else:
        return torch.zeros(features.shape[0], dtype=features.dtype, device=features.device)
    span = raw.max() - raw.min()
    return (raw - raw.min()) / span if span > 0 else torch.zeros_like(raw)


@register("cdpruner", needs_features=True)
def select_cdpruner(item: SelectionInput, k: int, seed: int) -> torch.Tensor:
    """``k`` tokens by greedy MAP of a DPP over relevance-weighted feature similarity."""
    features = _unit_features(item, torch.float64)
    n = features.shape[0]
    if k >= n:
        return torch.arange(n)
    relevance = _question_relevance(item, features)
    quality = torch.exp(RELEVANCE_WEIGHT * relevance)  # [N]
    gains = quality.square()  # residual variance of each candidate; L_ii = q_i^2 as S_ii = 1
    basis = torch.zeros((k, n), dtype=features.dtype, device=features.device)  # Cholesky rows, [k, N]
    chosen: list[int] = []
    taken = torch.zeros(n, dtype=torch.bool, device=features.device)
    for step in range(k):
        current = int(torch.argmax(gains))
        if gains[current] <= _EXHAUSTED:
            rest = torch.sort(relevance.masked_fill(taken, -1.0), descending=True, stable=True).indices
            chosen.extend(rest[: k - step].tolist())
            break
        chosen.append(current)
        taken[current] = True
        kernel_row = quality[current] * (features @ features[current]) * quality  # L[current], [N]
        row = (kernel_row - basis[:step, current] @ basis[:step]) / torch.sqrt(gains[current])
        basis[step] = row
        gains = gains - row.square()
        gains[taken] = -float("inf")
    return torch.tensor(chosen, dtype=torch.long)
