"""allocate: budgets, methods, determinism, raster order, bad input."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arr_coc.errors import InvalidBudgetError, InvalidGridError, InvalidRelevanceError, UnknownMethodError
from arr_coc.selection import SELECTORS, allocate, resolve_budget

CORE_METHODS = ["none", "uniform", "random", "arr-coc"]


def expected_count(budget, n, method):
    if method == "none":
        return n
    if isinstance(budget, int):
        return min(budget, n)
    return max(1, min(n, round(budget * n)))


@settings(max_examples=150, deadline=None)
@given(
    rows=st.integers(1, 24),
    cols=st.integers(1, 24),
    budget=st.one_of(st.integers(1, 700), st.floats(min_value=1e-4, max_value=1.0, exclude_min=False)),
    method=st.sampled_from(CORE_METHODS),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_allocate_properties(rows, cols, budget, method, seed, data):
    n = rows * cols
    relevance = torch.tensor(data.draw(st.lists(st.floats(0, 1), min_size=n, max_size=n)), dtype=torch.float32)
    kept = allocate(relevance.reshape(1, rows, cols), budget, method, seed)[0]
    assert kept.dtype == torch.long
    assert kept.numel() == expected_count(budget, n, method)
    assert torch.equal(kept, torch.unique(kept)), "unique and ascending"
    assert kept.min() >= 0 and kept.max() < n
    again = allocate(relevance.reshape(1, rows, cols), budget, method, seed)[0]
    assert torch.equal(kept, again), "deterministic"
    if method == "arr-coc":
        dropped = torch.ones(n, dtype=torch.bool)
        dropped[kept] = False
        if dropped.any():
            assert relevance[kept].min() >= relevance[dropped].max()


def two_objects(rows=16, cols=16):
    """Relevance and appearance cells of a bright red 2x2 object (raster 17, 18, 33, 34) and a
    dimmer blue one (170, 171, 186, 187) on grey."""
    cells = torch.full((3, rows, cols), 0.5)
    relevance = torch.full((rows, cols), 0.05)
    cells[:, 1:3, 1:3] = torch.tensor([0.5, 0.9, 0.8])[:, None, None]
    relevance[1:3, 1:3] = torch.tensor([[0.95, 0.94], [0.93, 0.92]])
    cells[:, 10:12, 10:12] = torch.tensor([0.3, 0.6, 0.1])[:, None, None]
    relevance[10:12, 10:12] = torch.tensor([[0.6, 0.59], [0.58, 0.57]])
    return relevance, cells


def test_arr_coc_reaches_every_relevant_object_before_a_second_token_of_one():
    relevance, cells = two_objects()
    (top,) = allocate(relevance[None], 2, "arr-coc")
    (covering,) = allocate(relevance[None], 2, "arr-coc", cells=[cells], explore=0.9)
    assert top.tolist() == [17, 18]  # both from the red object
    assert covering.tolist() == [17, 170]  # the red object's best token, then the blue object's best
    (six,) = allocate(relevance[None], 6, "arr-coc", cells=[cells], explore=0.9)
    assert set(six.tolist()) >= {17, 18, 33, 34, 170}  # then the rest of the most relevant object
    assert float(relevance.flatten()[six].min()) >= 0.5  # never the background


def test_arr_coc_without_exploration_or_cells_is_the_relevance_top_k():
    relevance, cells = two_objects()
    top = torch.sort(torch.topk(relevance.flatten(), 5).indices).values
    assert torch.equal(allocate(relevance[None], 5, "arr-coc", cells=[cells], explore=0.0)[0], top)
    assert torch.equal(allocate(relevance[None], 5, "arr-coc", explore=0.9)[0], top)


def test_arr_coc_exploration_is_per_image_in_a_batch():
    relevance, cells = two_objects()
    batch = allocate(
        torch.stack([relevance, relevance]), 2, "arr-coc", cells=torch.stack([cells, cells]), explore=[0.0, 0.9]
    )
    assert [k.tolist() for k in batch] == [[17, 18], [17, 170]]


@pytest.mark.parametrize("explore", [-0.1, 1.5, float("nan")])
def test_an_exploration_weight_outside_the_unit_interval_is_a_typed_error(explore):
    relevance, cells = two_objects()
    with pytest.raises(InvalidRelevanceError) as error:
        allocate(relevance[None], 2, "arr-coc", cells=[cells], explore=explore)
    assert error.value.field == "explore"


@pytest.mark.parametrize(
    "cells", [torch.rand(3, 7, 8), torch.rand(10, 3), torch.full((3, 8, 8), float("nan")), torch.ones(3, 8, 8).long()]
)
def test_appearance_cells_off_the_grid_are_a_typed_error(cells):
    relevance, _ = two_objects()
    with pytest.raises(InvalidRelevanceError) as error:
        allocate(relevance[None], 2, "arr-coc", cells=[cells], explore=0.5)
    assert error.value.field == "cells"


def test_top_relevance_ties_keep_lower_index():
    relevance = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.9, 0.1]])
    assert allocate(relevance, 3)[0].tolist() == [0, 1, 4]


def test_uniform_spreads_over_the_2d_grid():
    kept = allocate(torch.zeros(1, 16, 16), 16, "uniform")[0]
    rows, cols = kept // 16, kept % 16
    assert sorted(set(rows.tolist())) == [2, 6, 10, 14]
    assert sorted(set(cols.tolist())) == [2, 6, 10, 14]


def test_uniform_on_a_wide_grid_keeps_square_spacing():
    kept = allocate(torch.zeros(1, 4, 32), 32, "uniform")[0]
    rows, cols = kept // 32, kept % 32
    assert set(rows.tolist()) == {1, 3}
    assert sorted(set(cols.tolist())) == list(range(1, 32, 2))


def test_random_depends_on_seed_only():
    relevance = torch.rand(1, 10, 10)
    a = allocate(relevance, 20, "random", seed=1)[0]
    b = allocate(torch.rand(1, 10, 10), 20, "random", seed=1)[0]
    c = allocate(relevance, 20, "random", seed=2)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_mixed_batch_equals_one_by_one():
    maps = [torch.rand(4, 6), torch.rand(7, 3), torch.rand(2, 2)]
    budgets, methods, seeds = [5, 0.5, 1.0], ["arr-coc", "uniform", "random"], [0, 0, 3]
    together = allocate(maps, budgets, methods, seeds)
    for m, b, meth, s, kept in zip(maps, budgets, methods, seeds, together):
        assert torch.equal(allocate([m], b, meth, s)[0], kept)


def test_flat_relevance_with_grid():
    kept = allocate(torch.rand(2, 12), 0.5, "uniform", grid=(3, 4))
    assert [k.numel() for k in kept] == [6, 6]


@pytest.mark.parametrize("budget", [0, -1, -0.5, 0.0, 1.5, 2.0, float("nan"), float("inf"), True, "10", None])
def test_bad_budget(budget):
    with pytest.raises(InvalidBudgetError) as info:
        allocate(torch.rand(1, 4, 4), budget)
    assert info.value.field == "budget"


def test_budget_ratio_rounding():
    assert resolve_budget(0.25, 256) == 64
    assert resolve_budget(1e-6, 256) == 1
    assert resolve_budget(1.0, 256) == 256
    assert resolve_budget(10_000, 256) == 256
    assert math.isclose(resolve_budget(0.1, 100), 10)


def test_unknown_method():
    with pytest.raises(UnknownMethodError) as info:
        allocate(torch.rand(1, 4, 4), 4, "top-k-please")
    assert info.value.field == "method"


def test_grid_that_does_not_hold_the_scores():
    with pytest.raises(InvalidGridError):
        allocate(torch.rand(1, 12), 4, "uniform", grid=(5, 5))


def test_nan_relevance_is_refused():
    with pytest.raises(ValueError):
        allocate(torch.tensor([[0.1, float("nan"), 0.3]]), 1)


def test_question_tokens_reach_the_selector_per_image(monkeypatch):
    seen = []

    def spy(item, k, seed):
        seen.append(item.question_tokens)
        return torch.arange(k)

    monkeypatch.setitem(SELECTORS, "spy", spy)
    questions = [torch.rand(3, 8), torch.rand(5, 8)]
    allocate([torch.rand(4), torch.rand(6)], 2, "spy", question_tokens=questions)
    assert seen[0] is questions[0] and seen[1] is questions[1]
    allocate([torch.rand(4)], 2, "spy")
    assert seen[2] is None


def test_question_tokens_must_match_the_batch():
    with pytest.raises(ValueError, match="question_tokens"):
        allocate([torch.rand(4), torch.rand(4)], 1, question_tokens=[torch.rand(2, 8)])


def test_arr_coc_beyond_the_greedy_picks_fills_by_the_gain_they_leave():
    from arr_coc.selection.relevance_coverage import GREEDY_PICKS

    generator = torch.Generator().manual_seed(3)
    rows, cols = 24, 24
    relevance = torch.rand(rows, cols, generator=generator)
    cells = torch.rand(3, rows, cols, generator=generator)
    k = GREEDY_PICKS + 100
    (kept,) = allocate(relevance[None], k, "arr-coc", cells=[cells], explore=0.7)
    assert kept.numel() == k and torch.equal(kept, torch.unique(kept))
    (first,) = allocate(relevance[None], GREEDY_PICKS, "arr-coc", cells=[cells], explore=0.7)
    assert set(first.tolist()) <= set(kept.tolist())  # the greedy picks are kept, then the rest
