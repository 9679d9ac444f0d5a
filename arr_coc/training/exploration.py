"""Fitting the balancer's exploration weight: how far each question trades relevance for coverage.

The relevance loss cannot train it: ``arr-coc``'s selection is a greedy argmax. So
the weight is fitted to the selection's own outcome. For each training sample the
selection runs at the small budgets :data:`BUDGETS`, once per weight of
:data:`GRID`; a run's utility is

    0.5 * object hit rate + 0.5 * target recall

(the share of the question's objects, the 8-connected parts of its target mask, with
at least one kept token, and the share of its target tokens kept), averaged over
the budgets. A colour question needs one token of the right object, a count one
token of each object of its colour, a shape question the object's outline. The
sample's target weight is the best grid weight (the mean of the tied best), and the
exploration head (``TensionBalancer.explore``) is fitted to the targets by
binary cross-entropy, on the balancer's frozen context of each sample. Samples
without target tokens add nothing. Every other weight of the scorer stays as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from arr_coc.metrics import recall_at_budget
from arr_coc.scorer import RelevanceScorer
from arr_coc.selection import allocate
from arr_coc.training.data import CachedSample, size_groups, stack

GRID = (0.5, 0.6, 0.7, 0.85, 1.0)
"""Weights tried. None below 0.5: on a validation draw the testbed VLM answered worse from the
selections of lower weights at 3 % and 5 % (0.757 and 0.837 at 0, 0.827 and 0.870 at 0.25,
0.823 and 0.880 at 0.6, 0.830 and 0.883 at 0.9), though they keep more target tokens."""
BUDGETS = (0.03, 0.05, 0.1)
STEPS = 300
LR = 3e-3


@dataclass
class ExplorationFit:
    """The fitted head's outcome on the fitting samples.

    targets: ``[S]`` best grid weight per sample; predicted: ``[S]`` the head's weights after
    fitting; utility_by_weight: mean utility of each grid weight; utility_fitted: mean
    utility with each sample's predicted weight.
    """

    targets: torch.Tensor
    predicted: torch.Tensor
    utility_by_weight: dict[float, float]
    utility_fitted: float


def object_labels(target: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``[H', W']`` bool -> (``[H', W']`` long labels of its 8-connected parts, 1..n; 0 elsewhere; n)."""
    rows, cols = target.shape
    mask = target.bool().tolist()
    labels = [[0] * cols for _ in range(rows)]
    count = 0
    for i in range(rows):
        for j in range(cols):
            if not mask[i][j] or labels[i][j]:
                continue
            count += 1
            labels[i][j] = count
            frontier = [(i, j)]
            while frontier:
                a, b = frontier.pop()
                for y in range(max(0, a - 1), min(rows, a + 2)):
                    for x in range(max(0, b - 1), min(cols, b + 2)):
                        if mask[y][x] and not labels[y][x]:
                            labels[y][x] = count
                            frontier.append((y, x))
    return torch.tensor(labels, dtype=torch.long), count


def selection_utility(kept: torch.Tensor, target: torch.Tensor, labels: torch.Tensor, objects: int) -> float:
    """``0.5 * hit rate + 0.5 * recall`` of ``kept [K]`` raster indices against ``target [H', W']``."""
    hit = labels.flatten()[kept].unique()
    return 0.5 * int((hit > 0).sum()) / objects + 0.5 * recall_at_budget(kept, target)


@torch.no_grad()
def exploration_targets(
    scorer: RelevanceScorer, samples: Sequence[CachedSample]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample with targets: balancer context ``[S, F]``, best grid weight ``[S]``, utility ``[S, len(GRID)]``."""
    contexts, targets, utilities = [], [], []
    for group in size_groups([s for s in samples if s.target.any()]):
        images, grid, queries, _ = stack(group)
        out = scorer.score(images, grid, queries)
        stacked = torch.stack([out.information, out.perspectival, out.participatory], dim=1)
        contexts.append(scorer.balancer.context(stacked, queries.to(stacked.device)).cpu())
        for index, sample in enumerate(group):
            labels, objects = object_labels(sample.target)
            relevance, cells = out.relevance[index].cpu(), out.cells[index].cpu()
            row = []
            for weight in GRID:
                kept = allocate(
                    [relevance] * len(BUDGETS), list(BUDGETS), "arr-coc", cells=[cells] * len(BUDGETS), explore=weight
                )
                row.append(sum(selection_utility(k, sample.target, labels, objects) for k in kept) / len(BUDGETS))
            row = torch.tensor(row)
            best = torch.tensor(GRID)[row >= row.max() - 1e-9]
            utilities.append(row)
            targets.append(best.mean())
    return torch.cat(contexts), torch.stack(targets), torch.stack(utilities)


def fit_exploration(scorer: RelevanceScorer, samples: Sequence[CachedSample], seed: int = 0) -> ExplorationFit:
    """Fit ``scorer``'s exploration head on ``samples`` (module docstring); returns how it did on them."""
    if scorer.balancer.explore is None:
        raise ValueError("this scorer has no exploration head (a checkpoint from before it)")
    if not any(s.target.any() for s in samples):
        raise ValueError("no sample has target tokens: nothing to fit the exploration weight to")
    was_training = scorer.training
    scorer.eval()
    contexts, targets, utilities = exploration_targets(scorer, samples)
    head = scorer.balancer.explore
    device = next(head.parameters()).device
    contexts, targets = contexts.to(device), targets.to(device)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=LR, weight_decay=1e-4)
    batch = min(256, len(targets))
    head.train()
    for _ in range(STEPS):
        pick = torch.randint(len(targets), (batch,), generator=generator).to(device)
        loss = F.binary_cross_entropy_with_logits(scorer.balancer.exploration_logits(contexts[pick]), targets[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    head.eval()
    scorer.train(was_training)
    with torch.no_grad():
        predicted = scorer.balancer.exploration(contexts).cpu()
    grid = torch.tensor(GRID)
    nearest = (predicted[:, None] - grid[None]).abs().argmin(dim=1)  # the grid run closest to each prediction
    return ExplorationFit(
        targets=targets.cpu(),
        predicted=predicted,
        utility_by_weight={weight: float(utilities[:, i].mean()) for i, weight in enumerate(GRID)},
        utility_fitted=float(utilities[torch.arange(len(nearest)), nearest].mean()),
    )
