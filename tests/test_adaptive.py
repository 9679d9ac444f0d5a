"""The adaptive budget (`auto`): monotone in coverage, bounded, deterministic, batch-invariant, calibrated."""

from __future__ import annotations

import math

import pytest
import torch
from drawing import scene, shapes
from hypothesis import given, settings
from hypothesis import strategies as st

from arr_coc.adaptive import AutoBudget, auto_budget, auto_count, fit_calibration, target_probability
from arr_coc.errors import InvalidBudgetError
from arr_coc.selection import allocate, resolve_budget
from arr_coc.variants import VARIANTS, ad_hoc
from arr_coc.vlm.types import AnswerRequest, GenerationParams

maps = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=300).map(torch.tensor)
CALIBRATION = (0.74, -3.3)


@settings(max_examples=200, deadline=None)
@given(maps, st.floats(0.01, 1.0), st.floats(0.01, 1.0))
def test_more_coverage_never_keeps_fewer_tokens(relevance, low, high):
    low, high = sorted((low, high))
    assert auto_count(relevance, AutoBudget(coverage=low), CALIBRATION) <= auto_count(
        relevance, AutoBudget(coverage=high), CALIBRATION
    )
    assert auto_count(relevance, AutoBudget(coverage=1.0), CALIBRATION) == relevance.numel()


@settings(max_examples=200, deadline=None)
@given(maps, st.floats(0.01, 1.0), st.integers(1, 50), st.integers(0, 50))
def test_the_bounds_hold(relevance, coverage, low, extra):
    budget = AutoBudget(coverage=coverage, min_tokens=low, max_tokens=low + extra)
    k = auto_count(relevance, budget, CALIBRATION)
    assert min(low, relevance.numel()) <= k <= min(low + extra, relevance.numel())


def test_the_kept_set_is_the_fewest_top_tokens_holding_the_coverage():
    relevance = torch.tensor([0.9, 0.05, 0.8, 0.05, 0.05, 0.7, 0.05, 0.05])
    mass = target_probability(relevance, CALIBRATION)
    kept = allocate(relevance[None], AutoBudget(coverage=0.6), "arr-coc", calibration=CALIBRATION)[0]
    share = float(mass[kept].sum() / mass.sum())
    assert share >= 0.6 and kept.tolist() == sorted(kept.tolist())
    fewer = torch.sort(mass, descending=True).values[: len(kept) - 1].sum() / mass.sum()
    assert float(fewer) < 0.6  # one token less would not hold the coverage
    again = allocate(relevance[None], AutoBudget(coverage=0.6), "arr-coc", calibration=CALIBRATION)[0]
    assert torch.equal(kept, again)


def test_an_easy_map_keeps_fewer_tokens_than_a_flat_one():
    peaked = torch.full((192,), 0.02)
    peaked[:4] = 0.95
    flat = torch.full((192,), 0.3)
    budget = AutoBudget(coverage=0.6)
    assert auto_count(peaked, budget, CALIBRATION) < 10 < auto_count(flat, budget, CALIBRATION)


@pytest.mark.parametrize(
    "coverage, low, high, field",
    [
        (0.0, None, None, "coverage"),
        (1.5, None, None, "coverage"),
        (math.nan, None, None, "coverage"),
        ("0.5", None, None, "coverage"),
        (True, None, None, "coverage"),
        (0.5, 0, None, "min_tokens"),
        (0.5, 8, 4, "max_tokens"),
        (0.5, None, 2.5, "max_tokens"),
    ],
)
def test_bad_auto_budgets_get_typed_errors(coverage, low, high, field):
    with pytest.raises(InvalidBudgetError) as caught:
        auto_budget(coverage, low, high)
    assert caught.value.field == field
    with pytest.raises(InvalidBudgetError):
        resolve_budget("automatic", 10)


def test_calibration_recovers_known_parameters():
    generator = torch.Generator().manual_seed(0)
    relevance = torch.rand(20000, generator=generator)
    truth = target_probability(relevance, (1.5, -2.0))
    labels = (torch.rand(20000, generator=generator) < truth).float()
    scale, shift = fit_calibration(relevance, labels)
    assert abs(scale - 1.5) < 0.15 and abs(shift + 2.0) < 0.15


def test_auto_variants_are_registered_and_carry_their_bounds():
    assert VARIANTS["arr-coc-auto"].budget == AutoBudget() and VARIANTS["arr-coc-pre-auto"].stage == "pre"
    config = ad_hoc("arr-coc", auto_budget(0.9, 4, 40)).as_config()
    assert (config["budget"], config["coverage"], config["min_tokens"], config["max_tokens"]) == ("auto", 0.9, 4, 40)
    assert ad_hoc("arr-coc", "auto").budget == AutoBudget()


def test_batching_does_not_change_an_auto_selection(testbed_pipeline):
    pipeline = testbed_pipeline()
    requests = [
        AnswerRequest(
            scene(300, 200), "Where is the red house?", "arr-coc", auto_budget(0.7), GenerationParams(max_new_tokens=3)
        ),
        AnswerRequest(
            shapes(160, 240, seed=2), "How many shapes?", "arr-coc", "auto", GenerationParams(max_new_tokens=3)
        ),
        AnswerRequest(scene(224, 224), "Where?", "uniform", 0.5, GenerationParams(max_new_tokens=3)),
    ]
    alone = [pipeline.answer(r) for r in requests]
    batched = pipeline.answer_batch(requests)
    for one, many in zip(alone, batched):
        assert many.kept.tolist() == one.kept.tolist() and many.answer == one.answer
    expected = auto_count(alone[0].relevance.flatten(), auto_budget(0.7), pipeline.scorer.calibration)
    assert alone[0].kept_tokens == expected


def test_calibrate_command_writes_the_calibration_and_its_table(tmp_path, capsys):
    from arr_coc.scorer import RelevanceScorer
    from arr_coc_cli.main import main

    assert main(["calibrate", "--size", "24", "--seed", "5", "--out", str(tmp_path / "scorer")]) == 0
    scale, shift = RelevanceScorer.load(tmp_path / "scorer").calibration
    assert (scale, shift) != (1.0, 0.0) and scale > 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    ratios = [float(row[2]) for row in rows]
    assert len(rows) == 6 and ratios == sorted(ratios)  # more coverage, more tokens
