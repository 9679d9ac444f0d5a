"""divprune and cdpruner: K unique tokens, deterministic, and the behaviour each paper names."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import arr_coc.selection.cdpruner as baselines
from arr_coc.errors import InvalidQuestionError
from arr_coc.selection import FEATURE_METHODS, SELECTORS, SelectionInput, allocate
from arr_coc.selection.cdpruner import cdpruner, select_cdpruner
from arr_coc.selection.divprune import nearest_other_distance, select_divprune

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
    question = torch.randn(3, dim, generator=generator)
    relevance = torch.rand(n, generator=generator)
    runs = [
        allocate([relevance], k, method, seed=s, grid=[(1, n)], features=[features], question_tokens=[question])[0]
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
    question = torch.ones(1, 8)
    kept = allocate([torch.zeros(30)], 10, method, grid=[(5, 6)], features=[features], question_tokens=[question])[0]
    assert kept.numel() == 10 and torch.unique(kept).numel() == 10


@pytest.mark.parametrize("method", METHODS)
def test_needs_features(method):
    with pytest.raises(ValueError, match="features"):
        allocate([torch.rand(10)], 3, method)


def test_divprune_first_pick_is_the_token_whose_nearest_neighbour_is_farthest():
    """The reference's first pick; the old rule (least aligned with the mean feature) picks token 6 here."""
    degrees = torch.tensor([0.0, 2.0, 4.0, 6.0, 8.0, 90.0, 180.0, 175.0])  # a cluster, a loner, a pair
    features = torch.stack([torch.cos(torch.deg2rad(degrees)), torch.sin(torch.deg2rad(degrees))], dim=1)
    unit = F.normalize(features, dim=-1)
    old_rule = int(torch.argmin(unit @ F.normalize(unit.mean(dim=0), dim=0)))
    assert old_rule == 6
    assert select_divprune(SelectionInput(None, (1, 8), features), 1, 0).tolist() == [5]


def test_divprune_first_pick_ties_go_to_the_lowest_index():
    features = torch.eye(6)[[3, 1, 4, 0, 5, 2]]  # every nearest neighbour at distance 1
    assert select_divprune(SelectionInput(None, (1, 6), features), 1, 0).tolist() == [0]


@pytest.mark.parametrize("chunk_rows", [1, 3, 7, 64])
def test_nearest_other_distance_in_chunks_equals_the_full_matrix(chunk_rows):
    unit = F.normalize(torch.randn(20, 6, generator=torch.Generator().manual_seed(5)), dim=-1)
    distance = 1.0 - unit @ unit.T
    distance.fill_diagonal_(float("inf"))
    assert torch.allclose(nearest_other_distance(unit, chunk_rows), distance.min(dim=1).values, atol=1e-6)


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


def test_cdpruner_with_theta_prefers_question_relevant_and_diverse_tokens():
    """Diversity across clusters needs the exponential weighting (theta): with the linear default the
    quality of the question's cluster is ~1 and that of the others ~0, so relevance dominates (see
    test_cdpruner_linear_weighting_lets_relevance_dominate); the old exp(r) weighting was the default."""
    features, labels = clusters([10, 10, 10, 10], dim=16)
    question = torch.zeros(1, 16)
    question[0, 0] = 1.0  # cluster 0 points at the question, clusters 1..3 do not
    first = cdpruner(features, question, 1, theta=0.5)
    assert labels[first].tolist() == [0]
    four = cdpruner(features, question, 4, theta=0.5)
    assert sorted(labels[four].tolist()) == [0, 1, 2, 3]  # diversity: no cluster twice


def test_cdpruner_linear_weighting_lets_relevance_dominate():
    features, labels = clusters([10, 10, 10, 10], dim=16)
    question = torch.zeros(1, 16)
    question[0, 0] = 1.0
    two = cdpruner(features, question, 2)
    assert labels[two].tolist() == [0, 0]


def test_cdpruner_changes_with_the_question(monkeypatch):
    monkeypatch.setattr(baselines, "RELEVANCE_SIGN", 1)  # the geometry below reads "similar = relevant"
    features, labels = clusters([10, 10, 10], dim=8, seed=1)
    picks = []
    for axis in range(3):
        question = torch.zeros(1, 8)
        question[0, axis] = 1.0
        item = SelectionInput(None, (1, 30), features, question_tokens=question)
        picks.append(labels[select_cdpruner(item, 1, 0)].item())
    assert picks == [0, 1, 2]


@pytest.mark.parametrize("query", [None, torch.ones(8)])
def test_cdpruner_without_question_tokens_raises_instead_of_falling_back(query):
    """The old fallback (ARR-COC's relevance, or the mean embedding) mixed another method into the baseline."""
    features, labels = clusters([10, 10], dim=8, seed=2)
    relevance = (labels == 1).float()
    with pytest.raises(InvalidQuestionError) as info:
        allocate([relevance], 1, "cdpruner", features=[features], query=[query])
    assert info.value.field == "question"
    assert isinstance(info.value, ValueError)


def test_cdpruner_rejects_question_tokens_of_the_wrong_width():
    with pytest.raises(ValueError, match="question_tokens"):
        cdpruner(torch.randn(10, 8), torch.randn(3, 6), 2)


@pytest.mark.parametrize("theta", [0.0, 1.0, -0.5, 2.0])
def test_cdpruner_theta_outside_the_open_unit_interval_is_refused(theta):
    with pytest.raises(ValueError, match="theta"):
        cdpruner(torch.randn(10, 8), torch.randn(3, 8), 2, theta=theta)


def three_tokens(angle: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Token 0 on the question's axis (r = 1), token 1 close to it (r = cos angle), token 2 orthogonal (r = 0)."""
    features = torch.tensor([[1.0, 0.0, 0.0], [math.cos(angle), math.sin(angle), 0.0], [0.0, 0.0, 1.0]])
    return features, torch.tensor([[1.0, 0.0, 0.0]])


def test_cdpruner_linear_never_picks_a_zero_relevance_token_before_relevant_ones():
    features, question = three_tokens()
    assert cdpruner(features, question, 1).tolist() == [0]  # the most relevant first
    assert cdpruner(features, question, 2).tolist() == [0, 1]  # q = 0 for token 2, though it is the diverse one


def test_cdpruner_theta_picks_the_top_relevance_token_first_then_trades_relevance_for_diversity():
    features, question = three_tokens()
    assert cdpruner(features, question, 1, theta=0.5).tolist() == [0]
    assert cdpruner(features, question, 2, theta=0.5).tolist() == [0, 2]  # q in [1, e^0.5]: diversity wins


def test_cdpruner_theta_default_is_the_module_constant(monkeypatch):
    monkeypatch.setattr(baselines, "RELEVANCE_SIGN", 1)  # three_tokens() reads "similar = relevant"
    features, question = three_tokens()
    item = SelectionInput(None, (1, 3), features, question_tokens=question)
    assert baselines.THETA is None
    assert select_cdpruner(item, 2, 0).tolist() == [0, 1]
    monkeypatch.setattr(baselines, "THETA", 0.5)
    assert select_cdpruner(item, 2, 0).tolist() == [0, 2]


def test_cdpruner_linear_zero_relevance_tokens_come_last_on_random_features():
    generator = torch.Generator().manual_seed(4)
    features = torch.randn(10, 16, generator=generator)  # N < C: the kernel is never exhausted before k = N - 1
    question = torch.randn(4, 16, generator=generator)
    relevance = baselines.question_relevance(F.normalize(features.double(), dim=-1), question)
    least = int(torch.argmin(relevance))
    for k in range(1, 10):
        assert least not in cdpruner(features, question, k).tolist()


def test_cdpruner_averages_cosines_over_question_tokens_not_the_mean_embedding():
    """A long question token dominates the mean embedding, but each token's cosine counts once."""
    features = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    question = torch.tensor([[10.0, 0.0, 0.0], [0.0, 0.1, 0.0]])
    assert cdpruner(features, question, 1).tolist() == [1]  # mean cosines: 0.5, 0.71, 0
    assert cdpruner(features, question.mean(dim=0, keepdim=True), 1).tolist() == [0]  # cosines: 1, 0.71, 0


def test_relevance_sign_reverses_which_mirror_token_is_preferred(monkeypatch):
    features = torch.tensor([[0.5, 0.0, 1.0], [-0.5, 0.0, 1.0]])  # mirror images about the question's plane
    question = torch.tensor([[1.0, 0.0, 0.0]])

    def first_pick() -> list[int]:
        return allocate([torch.zeros(2)], 1, "cdpruner", features=[features], question_tokens=[question])[0].tolist()

    assert baselines.RELEVANCE_SIGN == -1  # the reference's negation, which held-out data favoured
    assert first_pick() == [1]  # -1: the reference's negated similarity
    monkeypatch.setattr(baselines, "RELEVANCE_SIGN", 1)
    assert first_pick() == [0]  # +1: more similar to the question = more relevant
    assert cdpruner(features, question, 1, sign=-1).tolist() == [1]
    assert cdpruner(features, question, 1, sign=1).tolist() == [0]


@pytest.mark.parametrize("theta", [None, 0.5])
@pytest.mark.parametrize("dim", [4, 32])
def test_cdpruner_exactly_k_unique_for_every_k(theta, dim):
    generator = torch.Generator().manual_seed(dim)
    features = torch.randn(12, dim, generator=generator)  # dim 4: the rank-4 kernel is exhausted after 4 picks
    features[7] = features[3]  # and a duplicate
    question = torch.randn(5, dim, generator=generator)
    for k in range(1, 13):
        kept = cdpruner(features, question, k, theta=theta)
        assert kept.numel() == k and torch.unique(kept).numel() == k
        assert int(kept.min()) >= 0 and int(kept.max()) < 12


@pytest.mark.parametrize("dim", [4, 32])
def test_divprune_exactly_k_unique_for_every_k(dim):
    generator = torch.Generator().manual_seed(dim)
    features = torch.randn(12, dim, generator=generator)
    features[7] = features[3]
    for k in range(1, 13):
        kept = select_divprune(SelectionInput(None, (1, 12), features), k, 0)
        assert kept.numel() == k and torch.unique(kept).numel() == k


@pytest.mark.parametrize("method", METHODS)
def test_independent_of_batch_mates(method):
    generator = torch.Generator().manual_seed(9)
    feats = [torch.randn(n, 12, generator=generator) for n in (20, 35, 50)]
    questions = [torch.randn(q, 12, generator=generator) for q in (2, 5, 9)]
    rel = [torch.rand(f.shape[0], generator=generator) for f in feats]
    grids = [(1, f.shape[0]) for f in feats]
    budgets = [5, 0.5, 12]
    together = allocate(rel, budgets, method, grid=grids, features=feats, question_tokens=questions)
    for i in range(3):
        alone = allocate(
            [rel[i]], budgets[i], method, grid=[grids[i]], features=[feats[i]], question_tokens=[questions[i]]
        )
        assert torch.equal(together[i], alone[0])
