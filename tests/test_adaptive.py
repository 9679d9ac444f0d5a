"""The adaptive budget (`auto`): monotone in coverage, bounded, deterministic, batch-invariant, calibrated."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from arr_coc.adaptive import (
    AutoBudget,
    Calibration,
    auto_budget,
    auto_count,
    fit_calibration,
    fit_coverage_table,
    target_probability,
)
from arr_coc.errors import CheckpointFormatError, InvalidBudgetError
from arr_coc.selection import allocate, resolve_budget
from arr_coc.variants import VARIANTS, ad_hoc
from arr_coc.vlm.types import AnswerRequest, GenerationParams
from testkit.drawing import scene, shapes

maps = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=300).map(torch.tensor)
CALIBRATION = Calibration(scale=0.74, shift=-3.3)  # Platt scaling only: coverage is per image
TABLE = ((0.3, 0.6), (0.5, 0.4), (0.5, 0.35), (0.8, 0.1), (0.95, 0.01), (1.0, 0.0))
TABLED = CALIBRATION.model_copy(update={"coverage_table": TABLE})  # coverage through a fitted threshold
BOTH_RULES = pytest.mark.parametrize("calibration", [CALIBRATION, TABLED], ids=["per-image-mass", "threshold"])


@BOTH_RULES
@settings(max_examples=200, deadline=None)
@given(relevance=maps, low=st.floats(0.01, 1.0), high=st.floats(0.01, 1.0))
def test_more_coverage_never_keeps_fewer_tokens(calibration, relevance, low, high):
    low, high = sorted((low, high))
    assert auto_count(relevance, AutoBudget(coverage=low), calibration) <= auto_count(
        relevance, AutoBudget(coverage=high), calibration
    )
    assert auto_count(relevance, AutoBudget(coverage=1.0), calibration) == relevance.numel()


@BOTH_RULES
@settings(max_examples=200, deadline=None)
@given(relevance=maps, coverage=st.floats(0.01, 1.0), low=st.integers(1, 50), extra=st.integers(0, 50))
def test_the_bounds_hold(calibration, relevance, coverage, low, extra):
    budget = AutoBudget(coverage=coverage, min_tokens=low, max_tokens=low + extra)
    k = auto_count(relevance, budget, calibration)
    assert min(low, relevance.numel()) <= k <= min(low + extra, relevance.numel())


def test_the_table_turns_coverage_into_a_falling_threshold():
    assert TABLED.threshold(0.1) == 0.6 and TABLED.threshold(0.3) == 0.6
    assert TABLED.threshold(0.4) == pytest.approx(0.5)  # halfway between (0.3, 0.6) and (0.5, 0.4)
    assert TABLED.threshold(0.5) == 0.4  # the first row that reaches it: fewest tokens
    assert TABLED.threshold(0.65) == pytest.approx(0.225)
    assert TABLED.threshold(1.0) == 0.0
    grid = [TABLED.threshold(c / 100) for c in range(1, 101)]
    assert grid == sorted(grid, reverse=True)


def test_a_tabled_calibration_keeps_every_token_likely_to_be_a_target():
    relevance = torch.tensor([0.9, 0.05, 0.8, 0.05, 0.3, 0.7, 0.05, 0.6])
    probability = target_probability(relevance, TABLED)
    counts = [auto_count(relevance, AutoBudget(coverage=c), TABLED) for c in (0.8, 0.9, 0.95)]
    assert counts == [int((probability >= TABLED.threshold(c)).sum()) for c in (0.8, 0.9, 0.95)] == [1, 4, 5]
    likely = torch.full((192,), 0.999)  # a question about the whole picture keeps it all
    unlikely = torch.full((192,), 0.3)  # flat and low: nothing the question is about
    budget = AutoBudget(coverage=0.8)
    assert auto_count(likely, budget, TABLED) == 192 and auto_count(unlikely, budget, TABLED) == 1


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
    truth = target_probability(relevance, Calibration(scale=1.5, shift=-2.0))
    labels = (torch.rand(20000, generator=generator) < truth).float()
    fitted = fit_calibration(relevance, labels)
    assert abs(fitted.scale - 1.5) < 0.15 and abs(fitted.shift + 2.0) < 0.15


def test_the_coverage_table_means_what_it_says_on_the_data_it_was_fitted_on():
    generator = torch.Generator().manual_seed(1)
    maps, targets = [], []
    for size in (1, 3, 6, 12, 24, 48) * 20:  # peaked maps with few targets, flatter ones with many
        relevance = torch.rand(256, generator=generator) * 0.6
        target = torch.zeros(256)
        spots = torch.randperm(256, generator=generator)[:size]
        target[spots] = 1.0
        relevance[spots] = 0.2 + 0.8 * torch.rand(size, generator=generator)
        maps.append(relevance)
        targets.append(target)
    maps.append(torch.rand(256, generator=generator))  # no target: left out of the mean
    targets.append(torch.zeros(256))
    calibration = fit_calibration(torch.cat(maps), torch.cat(targets))
    table = fit_coverage_table(maps, targets, calibration)
    assert [c for c, _ in table] == sorted(c for c, _ in table) and table[-1] == (1.0, 0.0)
    tabled = calibration.model_copy(update={"coverage_table": table})
    for coverage in (0.5, 0.7, 0.9):
        recalls = []
        for relevance, target in zip(maps[:-1], targets[:-1]):
            k = auto_count(relevance, AutoBudget(coverage=coverage), tabled)
            kept = torch.topk(relevance, k).indices
            recalls.append(float(target[kept].sum() / target.sum()))
        assert abs(sum(recalls) / len(recalls) - coverage) < 0.03
    with pytest.raises(ValueError, match="target tokens"):
        fit_coverage_table(maps[-1:], targets[-1:], calibration)


def test_the_coverage_table_follows_the_order_the_selection_keeps_tokens_in():
    generator = torch.Generator().manual_seed(2)
    maps, targets, orders = [], [], []
    for _ in range(60):
        relevance = torch.rand(64, generator=generator) * 0.6
        target = torch.zeros(64)
        target[:4] = 1.0
        relevance[:4] = 0.3 + 0.7 * torch.rand(4, generator=generator)
        by_relevance = torch.sort(relevance, descending=True, stable=True).indices
        others = by_relevance[target[by_relevance] == 0]
        # a selection that spends its first picks on other tokens before the targets
        decoys = int(torch.randint(0, 4, (1,), generator=generator))
        orders.append(torch.cat([others[:decoys], by_relevance[target[by_relevance] == 1], others[decoys:]]))
        maps.append(relevance)
        targets.append(target)
    calibration = fit_calibration(torch.cat(maps), torch.cat(targets))
    plain = fit_coverage_table(maps, targets, calibration)
    served = fit_coverage_table(maps, targets, calibration, orders)
    assert [t for _, t in plain] == [t for _, t in served]  # the same thresholds, other coverages
    assert [c for c, _ in served] == sorted(c for c, _ in served)

    def realized(table) -> float:
        tabled = calibration.model_copy(update={"coverage_table": table})
        recalls = []
        for relevance, target, order in zip(maps, targets, orders):
            k = auto_count(relevance, AutoBudget(coverage=0.75), tabled)
            recalls.append(float(target[order[:k]].sum() / target.sum()))
        return sum(recalls) / len(recalls)

    assert abs(realized(served) - 0.75) < 0.05  # coverage means what the selection keeps
    assert abs(realized(plain) - 0.75) > 0.05  # a table fitted for the top-K does not


@pytest.mark.parametrize(
    "table",
    [((0.5, 0.2), (0.4, 0.1)), ((0.4, 0.1), (0.5, 0.2)), ((0.5, 1.5),), ((-0.1, 0.5),)],
    ids=["coverage falls", "threshold rises", "threshold above 1", "coverage below 0"],
)
def test_a_bad_coverage_table_is_refused_and_a_checkpoint_with_one_is_a_format_error(table, tmp_path):
    from arr_coc.scorer import CONFIG_FILE, RelevanceScorer

    with pytest.raises(ValidationError, match="coverage_table"):
        Calibration(coverage_table=table)
    RelevanceScorer(8).save(tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**config, "calibration_coverage_table": table}))
    with pytest.raises(CheckpointFormatError) as caught:
        RelevanceScorer.load(tmp_path)
    assert caught.value.field == "scorer"


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
    calibration = RelevanceScorer.load(tmp_path / "scorer").calibration
    assert (calibration.scale, calibration.shift) != (1.0, 0.0) and calibration.scale > 0
    assert calibration.coverage_table[-1] == (1.0, 0.0) and len(calibration.coverage_table) > 10
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    ratios = [float(row[2]) for row in rows]
    assert len(rows) == 6 and ratios == sorted(ratios)  # more coverage, more tokens
