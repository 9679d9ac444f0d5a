"""Pure parts of training and evaluation: the synthetic set, the loss, recall, configs, W&B mode
and Launch override parsing, and the import layering (arr_coc never loads wandb)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from arr_coc.errors import EmptyDatasetError, InvalidConfigError, UnknownDatasetError
from arr_coc.metrics import answer_matches, percentile, recall_at_budget
from arr_coc.synthetic import COLOURS, POSITIONS, SHAPES, SyntheticShapes, token_mask
from arr_coc.tasks import load_dataset
from arr_coc.training.config import train_config
from arr_coc.training.loss import relevance_loss
from training_hooks.jobs.eval_job import EvalParams, apply_overrides, resolve_variant
from training_hooks.jobs.jobrun import launch_overrides, resolve_mode


def test_synthetic_samples_are_seeded_split_and_consistent() -> None:
    train, again = SyntheticShapes(24, "train", seed=3), SyntheticShapes(24, "train", seed=3)
    heldout = SyntheticShapes(24, "heldout", seed=3)
    assert np.array_equal(np.asarray(train[5].image), np.asarray(again[5].image))
    assert not any(np.array_equal(np.asarray(train[i].image), np.asarray(heldout[i].image)) for i in range(24))
    kinds = set()
    for i in range(24):
        sample = train[i]
        kinds.add(sample.kind)
        assert sample.grid == (12, 12) and 1 <= int(sample.target_mask.sum()) <= 30
        pixels = torch.from_numpy(np.asarray(sample.image, dtype=np.float32))  # [H, W, 3]
        cells = pixels.reshape(12, 28, 12, 28, 3).mean(dim=(1, 3))  # mean colour per token
        if sample.kind == "colour":
            assert sample.answer in SHAPES
            colour = sample.question.split(" the ")[1].split()[0]
        else:
            assert sample.answer in COLOURS
            colour = sample.answer
        rgb = torch.tensor(COLOURS[colour], dtype=torch.float32)
        inside = (cells[sample.target_mask] - rgb).norm(dim=1).min()
        outside = (cells[~sample.target_mask] - rgb).norm(dim=1).min()
        assert inside < 0.5 * outside, (sample.question, inside, outside)  # the target holds that colour, nothing else
        if sample.kind == "position":
            row, col = POSITIONS[sample.question.split("in the ")[1].rstrip("?")]
            ys, xs = torch.nonzero(sample.target_mask, as_tuple=True)
            assert set((ys >= 6).tolist()) == {bool(row)} and set((xs >= 6).tolist()) == {bool(col)}
    assert kinds == {"colour", "position", "shape"}


def test_dataset_errors_and_tiny_objects() -> None:
    with pytest.raises(EmptyDatasetError):
        SyntheticShapes(0)
    with pytest.raises(UnknownDatasetError):
        load_dataset("coco", "train", 4)
    with pytest.raises(UnknownDatasetError):
        SyntheticShapes(4, split="test")
    with pytest.raises(IndexError):
        SyntheticShapes(4)[4]
    speck = np.zeros((56, 56), bool)
    speck[30, 40] = True  # one pixel: below the coverage threshold everywhere
    assert token_mask(speck, (2, 2)).tolist() == [[False, False], [False, True]]


def test_loss_prefers_the_target_and_recall_counts_it() -> None:
    target = torch.zeros(1, 4, 4, dtype=torch.bool)
    target[0, 1:3, 1:3] = True
    good = target.float() * 0.8 + 0.1
    bad = 1.0 - good
    assert relevance_loss(good, target)[0] < relevance_loss(torch.full_like(good, 0.5), target)[0]
    assert relevance_loss(torch.full_like(good, 0.5), target)[0] < relevance_loss(bad, target)[0]
    assert recall_at_budget(torch.tensor([5, 6, 0]), target[0]) == 0.5
    with pytest.raises(ValueError):
        recall_at_budget(torch.tensor([0]), torch.zeros(2, 2, dtype=torch.bool))
    assert answer_matches("Circle.", "circle") and answer_matches("3", "3") and answer_matches("red<|im_end|>", "red")
    assert not answer_matches("circles", "circle") and not answer_matches("The shape is a circle", "circle")
    assert not answer_matches("", "red") and not answer_matches("34", "3")
    assert percentile([5.0, 1.0, 3.0, 2.0], 50) == 2.0 and percentile([1.0, 2.0, 3.0], 95) == 3.0


def test_the_participatory_map_can_be_trained_on_its_own() -> None:
    """``participatory_weight`` adds the relevance loss of the question-conditioned map alone."""
    from arr_coc.scorer import RelevanceScorer
    from arr_coc.training.data import CachedSample
    from arr_coc.training.loop import batch_loss

    generator = torch.Generator().manual_seed(0)
    target = torch.zeros(6, 8, dtype=torch.bool)
    target[2:4, 3:5] = True
    sample = CachedSample(
        image=torch.rand(3, 168, 224, generator=generator),
        grid=(6, 8),
        query=torch.randn(16, generator=generator),
        target=target,
        features=None,
        question="What colour is the star?",
        answer="red",
        kind="colour",
    )
    scorer = RelevanceScorer(query_dim=16)
    plain, parts = batch_loss(scorer, [sample, sample], train_config({"participatory_weight": 0}))
    both, both_parts = batch_loss(scorer, [sample, sample], train_config({"participatory_weight": 2.0}))
    assert "participatory" not in parts and both_parts["participatory"] > 0
    assert both.item() == pytest.approx(plain.item() + 2.0 * both_parts["participatory"], rel=1e-5)
    both.backward()
    assert scorer.participatory.query_proj.weight.grad.abs().sum() > 0


def test_the_balancer_keeps_its_equal_mix_through_the_warmup_while_the_maps_learn() -> None:
    from arr_coc.training.data import CachedSample
    from arr_coc.training.loop import train_scorer

    generator = torch.Generator().manual_seed(0)
    target = torch.zeros(6, 8, dtype=torch.bool)
    target[2:4, 3:5] = True
    samples = [
        CachedSample(
            torch.rand(3, 168, 224, generator=generator),
            (6, 8),
            torch.randn(16, generator=generator),
            target,
            None,
            "What colour is the star?",
            "red",
            "colour",
        )
        for _ in range(4)
    ]
    config = train_config(
        {
            "steps": 3,
            "batch_size": 2,
            "balancer_warmup_steps": 3,
            "explore_samples": 0,
            "methods": ["arr-coc"],
            "heatmap_every": 0,
            "stem_pixels_per_cell": 4,
        }
    )
    result = train_scorer(config, samples, samples, query_dim=16, progress=False)
    fresh = type(result.scorer)(16, stem_pixels_per_cell=4)
    trained, initial = result.scorer.state_dict(), fresh.state_dict()
    assert all(torch.equal(trained[k], initial[k]) for k in initial if k.startswith("balancer."))
    assert any(not torch.equal(trained[k], initial[k]) for k in initial if k.startswith("stem."))
    assert any(not torch.equal(trained[k], initial[k]) for k in initial if k.startswith("participatory."))
    assert result.exploration is None  # explore_samples 0: the head keeps its initial weight


def test_config_layers_and_errors() -> None:
    config = train_config({"steps": 10, "lr": 0.1}, {"steps": 20, "seed": None}, {"lr": 0.2})
    assert (config.steps, config.lr, config.seed) == (20, 0.2, 0)
    for bad, field in (
        ({"stepz": 1}, "stepz"),
        ({"budgets": [0.0]}, "budgets"),
        ({"methods": ["blur"]}, "methods"),
        ({"dataset": "coco"}, "dataset"),
        ({"participatory_weight": -1}, "participatory_weight"),
        ({"balancer_warmup_steps": -1}, "balancer_warmup_steps"),
        ({"stem_pixels_per_cell": 6}, "stem_pixels_per_cell"),
        ({"stem_channels": -2}, "stem_channels"),
        ({"explore_samples": -1}, "explore_samples"),
    ):
        with pytest.raises(InvalidConfigError) as caught:
            train_config(bad)
        assert caught.value.field.startswith(field)


def test_wandb_mode_and_launch_overrides() -> None:
    assert resolve_mode("auto", {}) == "offline"
    assert resolve_mode("auto", {"WANDB_API_KEY": "k"}) == "online"
    assert resolve_mode("auto", {"WANDB_API_KEY": "k", "WANDB_MODE": "offline"}) == "offline"
    assert resolve_mode("auto", {"ARR_COC_WANDB": "0", "WANDB_API_KEY": "k"}) == "disabled"
    assert resolve_mode("off", {"WANDB_API_KEY": "k"}) == "disabled"
    with pytest.raises(InvalidConfigError):
        resolve_mode("loud", {})
    assert launch_overrides({"WANDB_CONFIG": '{"steps": 3}'}) == {}  # not launched: ignored
    assert launch_overrides({"WANDB_LAUNCH": "True", "WANDB_CONFIG": '{"steps": 3}'}) == {"steps": 3}
    shards = {"WANDB_LAUNCH": "true", "WANDB_CONFIG_0": '{"budget": ', "WANDB_CONFIG_1": "0.5}"}
    assert launch_overrides(shards) == {"budget": 0.5}
    with pytest.raises(InvalidConfigError):
        launch_overrides({"WANDB_LAUNCH": "1", "WANDB_CONFIG": "{steps"})


def test_eval_variant_resolution() -> None:
    assert resolve_variant(EvalParams(variant="divprune-10")).name == "divprune-10"
    assert resolve_variant(EvalParams(method="random", budget=0.3)).name == "random@0.3"
    assert resolve_variant(EvalParams(variant="arr-coc-25", budget=0.25)).name == "arr-coc-25"
    cli = EvalParams(variant="arr-coc-25", method="arr-coc", budget=0.25).model_dump()
    assert resolve_variant(apply_overrides(cli, {"variant": "uniform-50"})).name == "uniform-50"
    assert resolve_variant(apply_overrides(cli, {"budget": 0.1})).name == "arr-coc@0.1"


def test_arr_coc_and_the_cli_parser_never_import_wandb_or_bentoml() -> None:
    code = (
        "import sys, arr_coc_cli.main, arr_coc.synthetic, arr_coc.evaluation, arr_coc.training.loop, "
        "arr_coc.vlm.pipeline, arr_coc.relevance_model, arr_coc.variants, arr_coc.settings; "
        "arr_coc_cli.main.build_parser(); "
        "assert not {'wandb', 'bentoml'} & set(sys.modules), {'wandb', 'bentoml'} & set(sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
