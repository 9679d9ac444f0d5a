"""Fitting the balancer's exploration weight to the arr-coc selection's outcome."""

import pytest
import torch
import torch.nn.functional as F

from arr_coc.scorer import RelevanceScorer
from arr_coc.training.data import CachedSample
from arr_coc.training.exploration import GRID, fit_exploration, object_labels, selection_utility
from testkit.drawing import as_batch, shapes

QUERY_DIM = 16
GRID_SIDE = (8, 8)


def sample(seed: int, target: torch.Tensor) -> CachedSample:
    image = as_batch(shapes(224, 224, seed=seed))[0]
    query = torch.randn(QUERY_DIM, generator=torch.Generator().manual_seed(seed))
    return CachedSample(image, GRID_SIDE, query, target, None, "What colour is the star?", "red", "colour")


def two_part_target() -> torch.Tensor:
    target = torch.zeros(GRID_SIDE, dtype=torch.bool)
    target[1:3, 1:3] = True
    target[5:7, 4:6] = True
    return target


def test_object_labels_count_eight_connected_parts():
    target = two_part_target()
    target[3, 3] = True  # touches the first part diagonally
    labels, count = object_labels(target)
    assert count == 2
    assert labels[1, 1] == labels[3, 3] != labels[5, 4]
    assert int((labels > 0).sum()) == int(target.sum())
    assert object_labels(torch.zeros(4, 4, dtype=torch.bool))[1] == 0


def test_selection_utility_weighs_objects_hit_and_tokens_kept():
    target = two_part_target()
    labels, count = object_labels(target)
    one_of_each = torch.tensor([1 * 8 + 1, 5 * 8 + 4])  # one token of each part
    assert selection_utility(one_of_each, target, labels, count) == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 8)
    first_part = torch.tensor([9, 10, 17, 18])
    assert selection_utility(first_part, target, labels, count) == pytest.approx(0.5 * 0.5 + 0.5 * 4 / 8)


def test_fit_moves_the_head_towards_the_best_weights_and_nothing_else():
    scorer = RelevanceScorer(QUERY_DIM, explore=0.5)
    samples = [sample(seed, two_part_target()) for seed in range(6)]
    frozen = {n: p.detach().clone() for n, p in scorer.named_parameters() if not n.startswith("balancer.explore.")}
    head_before = [p.detach().clone() for p in scorer.balancer.explore.parameters()]
    fit = fit_exploration(scorer, samples)
    assert fit.targets.shape == fit.predicted.shape == (6,)
    assert all(min(GRID) <= float(t) <= max(GRID) for t in fit.targets)
    assert set(fit.utility_by_weight) == set(GRID)
    assert min(fit.utility_by_weight.values()) <= fit.utility_fitted <= 1.0
    before = F.binary_cross_entropy(torch.full_like(fit.targets, 0.5), fit.targets)
    after = F.binary_cross_entropy(fit.predicted, fit.targets)
    assert after < before
    for name, parameter in scorer.named_parameters():
        if name in frozen:
            assert torch.equal(parameter, frozen[name]), name
    assert any(not torch.equal(a, b) for a, b in zip(head_before, scorer.balancer.explore.parameters()))


def test_fit_needs_an_exploration_head_and_samples_with_targets():
    with pytest.raises(ValueError, match="no exploration head"):
        fit_exploration(RelevanceScorer(QUERY_DIM, explore_head=False), [sample(0, two_part_target())])
    empty = torch.zeros(GRID_SIDE, dtype=torch.bool)
    with pytest.raises(ValueError, match="no sample has target tokens"):
        fit_exploration(RelevanceScorer(QUERY_DIM), [sample(0, empty), sample(1, empty)])
