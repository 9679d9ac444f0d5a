"""Pruning before the vision tower (stage "pre"): the stock tower when all is kept, subsets that see only
themselves at their original positions and windows, stock greedy ids, the stage switch and its bad input."""

from __future__ import annotations

import types

import pytest
import torch
from test_vlm_equivalence import QUESTION, stock_greedy_ids
from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

from arr_coc.errors import InvalidBudgetError, InvalidGridError, InvalidStageError
from arr_coc.variants import VARIANTS, ad_hoc
from arr_coc.vlm.inputs import encode_request
from arr_coc.vlm.pre_encoder import _kept_windows, encode_kept, kept_patches
from arr_coc.vlm.pruning import encode_images
from arr_coc.vlm.types import AnswerRequest, GenerationParams
from testkit.drawing import scene, shapes

FAMILIES = ["qwen2-vl", "qwen2.5-vl", "qwen3-vl"]


def encoded(vlm, *images):
    return [encode_request(vlm.processor, image, QUESTION, vlm.context_length, 8) for image in images]


def random_subset(count: int, keep: int, seed: int = 0) -> torch.Tensor:
    return torch.sort(torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:keep]).values


@pytest.mark.parametrize("family", FAMILIES)
def test_keeping_everything_is_the_stock_tower(testbed_pipeline, family):
    vlm = testbed_pipeline(family).vlm
    inputs = encoded(vlm, scene(300, 200), shapes(200, 260, seed=1))
    pixels, grids = [e.pixel_values for e in inputs], [e.image_grid_thw for e in inputs]
    with torch.no_grad():
        stock = encode_images(vlm, pixels, grids)
        pre = encode_kept(vlm, pixels, grids, [None, None])
        every = [torch.arange(v.features.shape[0]) for v in stock]
        explicit = encode_kept(vlm, pixels, grids, every)
    for a, b, c in zip(stock, pre, explicit):
        assert torch.allclose(a.features, b.features, atol=1e-5) and torch.equal(b.features, c.features)
        assert (a.deepstack is None) == (b.deepstack is None) == (family != "qwen3-vl")
        for x, y in zip(a.deepstack or [], b.deepstack or []):
            assert torch.allclose(x, y, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_subset_sees_only_its_own_patches(testbed_pipeline, family):
    """Repainting every dropped token's pixels changes nothing in the kept tokens' features."""
    vlm = testbed_pipeline(family).vlm
    (inputs,) = encoded(vlm, scene(300, 200))
    count = inputs.pixel_values.shape[0] // 4
    kept = random_subset(count, count // 3)
    repainted = inputs.pixel_values.clone()
    dropped = torch.ones(count, dtype=torch.bool)
    dropped[kept] = False
    repainted[kept_patches(torch.nonzero(dropped).flatten(), 4)] = torch.randn_like(repainted[:1])
    with torch.no_grad():
        (a,) = encode_kept(vlm, [inputs.pixel_values], [inputs.image_grid_thw], [kept])
        (b,) = encode_kept(vlm, [repainted], [inputs.image_grid_thw], [kept])
        (full,) = encode_images(vlm, [inputs.pixel_values], [inputs.image_grid_thw])
    assert a.features.shape == (kept.numel(), vlm.hidden_size)
    assert torch.allclose(a.features, b.features, atol=1e-6)
    assert not torch.allclose(a.features, full.features[kept], atol=1e-3), "the subset does not see the others"


def test_qwen2_subset_equals_the_full_tower_with_attention_restricted_to_it(testbed_pipeline):
    """Qwen2-VL's tower attends over the whole image: run it on ALL patches, the kept ones first in one
    attention segment and the dropped ones in another, each patch at its original rotary position."""
    vlm = testbed_pipeline("qwen2-vl").vlm
    visual = vlm.model.model.visual
    (inputs,) = encoded(vlm, shapes(280, 210, seed=2))
    thw = inputs.image_grid_thw.reshape(1, 3)
    count = inputs.pixel_values.shape[0] // 4
    kept = random_subset(count, count // 4, seed=3)
    dropped = torch.tensor([t for t in range(count) if t not in set(kept.tolist())])
    order = torch.cat([kept_patches(kept, 4), kept_patches(dropped, 4)])
    positions = get_vision_position_ids(thw, 2)[order]
    segments = torch.tensor([0, kept.numel() * 4, count * 4], dtype=torch.int32)
    with torch.no_grad():
        reference = visual(inputs.pixel_values[order], grid_thw=thw, position_ids=positions, cu_seqlens=segments)
        (subset,) = encode_kept(vlm, [inputs.pixel_values], [inputs.image_grid_thw], [kept])
    assert torch.allclose(subset.features, reference.pooler_output[: kept.numel()], atol=1e-5)


def test_qwen25_windows_keep_their_original_partition():
    visual = types.SimpleNamespace(spatial_merge_size=2, window_size=2 * 2 * 14, patch_size=14)
    thw = torch.tensor([1, 12, 16])  # 6 x 8 merged tokens, windows of 2 x 2 tokens
    full_index, full_cu = get_vision_window_index(thw[None], 2, visual.window_size, 14)
    windows = [full_index[a // 4 : b // 4].tolist() for a, b in zip(full_cu[:-1].tolist(), full_cu[1:].tolist())]
    kept = random_subset(48, 17, seed=4)
    local, lengths = _kept_windows(thw, kept, visual)
    expected_order = [t for window in windows for t in window if t in set(kept.tolist())]
    assert kept[local].tolist() == expected_order
    expected_lengths = [4 * sum(t in set(kept.tolist()) for t in window) for window in windows]
    assert lengths.tolist() == [n for n in expected_lengths if n > 0]


@pytest.mark.parametrize("family", FAMILIES)
def test_pre_with_everything_kept_gives_stock_greedy_ids(testbed_pipeline, family):
    pipeline = testbed_pipeline(family)
    vlm = pipeline.vlm
    image = scene(200, 150)
    stock = stock_greedy_ids(vlm, image)
    for method, budget in [("none", 0.2), ("arr-coc", 1.0), ("uniform", 1.0)]:
        request = AnswerRequest(image, QUESTION, method, budget, GenerationParams(max_new_tokens=16), stage="pre")
        assert pipeline.answer(request).token_ids == stock, method


@pytest.mark.parametrize("family", FAMILIES)
def test_pre_keeps_the_post_tokens_and_batches_with_post(testbed_pipeline, family):
    pipeline = testbed_pipeline(family)
    params = GenerationParams(max_new_tokens=6)
    requests = [
        AnswerRequest(scene(300, 200), QUESTION, "arr-coc", 0.25, params, stage="pre"),
        AnswerRequest(shapes(200, 260, seed=1), QUESTION, "divprune", 0.25, params),
        AnswerRequest(scene(240, 240, seed=2), "What?", "random", 0.1, params, stage="pre"),
        AnswerRequest(scene(300, 200), QUESTION, "arr-coc", 0.25, params),
    ]
    alone = [pipeline.answer(r) for r in requests]
    together = pipeline.answer_batch(requests)
    for one, many in zip(alone, together):
        assert many.token_ids == one.token_ids and torch.equal(many.kept, one.kept)
    assert torch.equal(alone[0].kept, alone[3].kept), "the scorer does not depend on the stage"
    assert alone[0].kept_tokens < alone[0].total_tokens
    assert {"vision", "scoring", "prefill"} <= set(alone[0].timings_ms)


def test_bad_stages_budgets_and_grids_get_the_typed_errors_of_post(testbed_pipeline):
    pipeline = testbed_pipeline()
    image = scene(200, 150)
    with pytest.raises(InvalidStageError, match="unknown stage"):
        pipeline.answer(AnswerRequest(image, QUESTION, "arr-coc", 0.25, stage="middle"))
    with pytest.raises(InvalidStageError, match="features"):
        pipeline.answer(AnswerRequest(image, QUESTION, "divprune", 0.25, stage="pre"))
    for stage in ("post", "pre"):
        with pytest.raises(InvalidBudgetError):
            pipeline.answer(AnswerRequest(image, QUESTION, "arr-coc", 1.5, stage=stage))
        with pytest.raises(InvalidGridError):
            pipeline.answer(AnswerRequest(image, QUESTION, "arr-coc", 0.5, relevance=torch.rand(3, 3), stage=stage))


def test_pre_variants_and_ad_hoc_stage():
    for method in ("arr-coc", "uniform", "random"):
        for percent in (3, 5, 10, 25, 50):
            variant = VARIANTS[f"{method}-pre-{percent}"]
            assert variant.stage == "pre" and variant.method == method and variant.as_config()["stage"] == "pre"
            assert variant.budget == percent / 100
    assert not any(v.stage == "pre" for v in VARIANTS.values() if v.method in ("divprune", "cdpruner"))
    assert ad_hoc("uniform", 0.3, "pre").name == "uniform@0.3@pre"
    with pytest.raises(InvalidStageError):
        ad_hoc("cdpruner", 0.3, "pre")
