"""divprune and cdpruner: K unique tokens, deterministic, and the behaviour each paper names."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from arr_coc.attending import FEATURE_METHODS, SELECTORS, SelectionInput, allocate
from arr_coc.baselines import select_cdpruner, select_divprune

METHODS = ["divprune", "cdpruner"]


def clusters(sizes: list[int], dim: int = 32, spread: float = 0.05, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, dim]`` features in tight clusters around orthogonal centres, and each token's cluster id."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[: len(sizes)] * 5.0
    labels = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    features = centres[labels] + spread * torch.randn(len(labels), dim, generator=generator)
    perm = torch.randperm(len(labels), generator=generator)
    return features[perm], labels[perm]


def test_registered_as_feature_methods():
    for method in METHODS:
        assert method in SELECTORS and method in FEATURE_METHODS


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("n", "dim", "k"), [(60, 16, 1), (60, 16, 15), (60, 16, 40), (200, 64, 50), (7, 4, 7)])
def test_k_unique_in_range_and_deterministic(method, n, dim, k):
    generator = torch.Generator().manual_seed(n + k)
    features = torch.randn(n, dim, generator=generator)
    query = torch.randn(dim, generator=generator)
    relevance = torch.rand(n, generator=generator)
    runs = [
        allocate([relevance], k, method, seed=s, grid=[(1, n)], features=[features], query=[query])[0]
        for s in (0, 1, 0)
    ]
    kept = runs[0]
    assert kept.numel() == k and torch.unique(kept).numel() == k
    assert int(kept.min()) >= 0 and int(kept.max()) < n
    assert torch.equal(kept, torch.sort(kept).values)
    assert all(torch.equal(kept, other) for other in runs[1:])  # seed-free and repeatable


@pytest.mark.parametrize("method", METHODS)
def test_duplicate_features_still_give_k_unique(method):
    features = torch.ones(30, 8)  # every token identical: no diversity left after the first pick
    kept = allocate([torch.zeros(30)], 10, method, grid=[(5, 6)], features=[features], query=[torch.ones(8)])[0]
    assert kept.numel() == 10 and torch.unique(kept).numel() == 10


@pytest.mark.parametrize("method", METHODS)
def test_needs_features(method):
    with pytest.raises(ValueError, match="features"):
        allocate([torch.rand(10)], 3, method)


def test_divprune_covers_every_cluster_first():
    features, labels = clusters([40, 5, 3, 20, 2])
    item = SelectionInput(relevance=None, grid=(1, len(labels)), features=features)
    kept = select_divprune(item, 5, seed=0)
    assert sorted(labels[kept].tolist()) == [0, 1, 2, 3, 4]


def test_divprune_maximizes_the_minimum_distance_better_than_random():
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(300, 24, generator=generator)
    unit = F.normalize(features, dim=-1)

    def min_distance(indices: torch.Tensor) -> float:
        chosen = unit[indices]
        distance = 1.0 - chosen @ chosen.T
        return float(distance[~torch.eye(len(indices), dtype=torch.bool)].min())

    kept = select_divprune(SelectionInput(None, (1, 300), features), 20, 0)
    randoms = [min_distance(torch.randperm(300, generator=generator)[:20]) for _ in range(20)]
    assert min_distance(kept) > max(randoms)


def test_cdpruner_prefers_question_relevant_and_diverse_tokens():
    # cluster 0 points at the question, clusters 1..3 do not; 1 token per cluster first, cluster 0 first of all
    features, labels = clusters([10, 10, 10, 10], dim=16)
    query = torch.zeros(16)
    query[0] = 1.0
    item = SelectionInput(relevance=None, grid=(1, 40), features=features, query=query)
    first = select_cdpruner(item, 1, seed=0)
    assert labels[first].tolist() == [0]
    four = select_cdpruner(item, 4, seed=0)
    assert sorted(labels[four].tolist()) == [0, 1, 2, 3]  # diversity: no cluster twice


def test_cdpruner_changes_with_the_question():
    features, labels = clusters([10, 10, 10], dim=8, seed=1)
    picks = []
    for axis in range(3):
        query = torch.zeros(8)
        query[axis] = 1.0
        picks.append(labels[select_cdpruner(SelectionInput(None, (1, 30), features, query), 1, 0)].item())
    assert picks == [0, 1, 2]


def test_cdpruner_falls_back_to_relevance_without_a_query():
    features, labels = clusters([10, 10], dim=8, seed=2)
    relevance = (labels == 1).float()
    kept = select_cdpruner(SelectionInput(relevance, (1, 20), features, None), 1, 0)
    assert labels[kept].tolist() == [1]


@pytest.mark.parametrize("method", METHODS)
def test_independent_of_batch_mates(method):
    generator = torch.Generator().manual_seed(9)
    feats = [torch.randn(n, 12, generator=generator) for n in (20, 35, 50)]
    queries = [torch.randn(12, generator=generator) for _ in feats]
    rel = [torch.rand(f.shape[0], generator=generator) for f in feats]
    grids = [(1, f.shape[0]) for f in feats]
    together = allocate(rel, [5, 0.5, 12], method, grid=grids, features=feats, query=queries)
    for i in range(3):
        alone = allocate([rel[i]], [5, 0.5, 12][i], method, grid=[grids[i]], features=[feats[i]], query=[queries[i]])
        assert torch.equal(together[i], alone[0])
