"""The shipped default: a trained tiny Qwen2.5-VL and its trained scorer answer the synthetic VQA task.

Held-out samples only (the ``heldout`` split never shares a seed with training).
CI never retrains: these tests load the files shipped in ``arr_coc/assets/``.
"""

from __future__ import annotations

import json

import pytest

from arr_coc.evaluation import evaluate_variant, summarize
from arr_coc.scorer import RelevanceScorer
from arr_coc.tasks.shapes_vqa import ShapesVQA
from arr_coc.training.data import processor_grid
from arr_coc.variants import get_variant
from arr_coc.vlm.loading import load_vlm
from arr_coc.vlm.pipeline import VLMPipeline
from arr_coc.vlm.testbed import EMBEDDED_MODEL, EMBEDDED_SCORER

pytestmark = pytest.mark.slow

CONTRACT = json.loads((EMBEDDED_MODEL / "contract.json").read_text())  # the floors the model card states
SAMPLES = CONTRACT["heldout_samples"]


@pytest.fixture(scope="module")
def pipeline() -> VLMPipeline:
    return VLMPipeline.from_pretrained(device="cpu", dtype="fp32")  # the embedded default


@pytest.fixture(scope="module")
def heldout(pipeline):
    return ShapesVQA(SAMPLES, "heldout", seed=0, grid_for=processor_grid(pipeline.vlm.processor))


def _accuracy(pipeline, variant: str, dataset) -> dict[str, float]:
    records = list(evaluate_variant(pipeline, get_variant(variant), dataset, batch_size=8, max_new_tokens=4))
    return summarize(records, 1.0)


def test_shipped_files_load_through_the_normal_path_and_stay_small() -> None:
    vlm = load_vlm(EMBEDDED_MODEL, device="cpu", dtype="fp32")
    assert vlm.family.name == "qwen2.5-vl" and vlm.model.__class__.__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert (EMBEDDED_MODEL / "model.safetensors").stat().st_size <= 25 * 2**20
    assert (EMBEDDED_MODEL / "README.md").is_file(), "the model card ships beside the weights"
    scorer = RelevanceScorer.load(EMBEDDED_SCORER)
    assert scorer.query_dim == vlm.hidden_size
    assert json.loads((EMBEDDED_MODEL / "config.json").read_text())["model_type"] == "qwen2_5_vl"


def test_all_tokens_answer_the_heldout_sample(pipeline, heldout) -> None:
    """Far above chance (about 0.18). The floor leaves two answers of slack below what these weights give
    here, as another machine's float kernels may flip a near-tie; it guards a regression."""
    summary = _accuracy(pipeline, "full", heldout)
    assert summary["accuracy"] >= CONTRACT["all_tokens_accuracy_at_least"], summary


def test_arr_coc_at_10_percent_beats_uniform_and_random(pipeline, heldout) -> None:
    arr_coc = _accuracy(pipeline, "arr-coc-10", heldout)
    uniform = _accuracy(pipeline, "uniform-10", heldout)
    random = _accuracy(pipeline, "random-10", heldout)
    margin = CONTRACT["arr_coc_10_over_uniform_10_and_random_10_accuracy_at_least"]
    assert arr_coc["accuracy"] >= uniform["accuracy"] + margin, (arr_coc, uniform)
    assert arr_coc["accuracy"] >= random["accuracy"] + margin, (arr_coc, random)
    margin = CONTRACT["arr_coc_10_over_uniform_10_and_random_10_recall_at_least"]
    assert arr_coc["recall"] >= uniform["recall"] + margin and arr_coc["recall"] >= random["recall"] + margin


def test_pre_encoder_pruning_keeps_the_same_tokens_and_most_of_the_accuracy(pipeline, heldout) -> None:
    post = _accuracy(pipeline, "arr-coc-25", heldout)
    pre = _accuracy(pipeline, "arr-coc-pre-25", heldout)
    uniform = _accuracy(pipeline, "uniform-pre-25", heldout)
    assert pre["recall"] == post["recall"] and pre["kept_ratio"] == post["kept_ratio"]
    assert pre["accuracy"] >= uniform["accuracy"] + CONTRACT["arr_coc_pre_25_over_uniform_pre_25_accuracy_at_least"]
    assert pre["accuracy"] >= post["accuracy"] - CONTRACT["arr_coc_pre_25_below_arr_coc_25_accuracy_at_most"]


def test_at_five_percent_arr_coc_keeps_more_of_the_targets_than_divprune(pipeline, heldout) -> None:
    """The shipped scorer finds objects by shape as well as colour, and its selection reaches every object
    the question is about: at 5 % it keeps 0.66 of the target tokens of a validation draw, DivPrune 0.53."""
    variant = get_variant("full").model_copy(update={"name": "arr-coc@0.05", "method": "arr-coc", "budget": 0.05})
    divprune = get_variant("full").model_copy(update={"name": "divprune@0.05", "method": "divprune", "budget": 0.05})
    ours = summarize(list(evaluate_variant(pipeline, variant, heldout, batch_size=8, max_new_tokens=4)), 1.0)
    theirs = summarize(list(evaluate_variant(pipeline, divprune, heldout, batch_size=8, max_new_tokens=4)), 1.0)
    assert ours["kept_ratio"] == pytest.approx(theirs["kept_ratio"])
    assert ours["recall"] >= theirs["recall"] + CONTRACT["arr_coc_5_over_divprune_5_recall_at_least"], (ours, theirs)
