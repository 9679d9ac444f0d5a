"""The token grid bridge and the query embedding."""

from __future__ import annotations

import pytest
import torch

from arr_coc.images import to_tensor
from arr_coc.texture import texture_array
from arr_coc.vlm.grid import merged_grid, resized_token_grid, token_grid
from arr_coc.vlm.inputs import resized_size
from testkit.drawing import noise, scene


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen3-vl"])
def test_grid_matches_the_visual_tokens_the_llm_sees(testbed_pipeline, family):
    pipeline = testbed_pipeline(family)
    processor = pipeline.vlm.processor
    image = scene(333, 210)
    bridge = pipeline.token_grid(image)
    batch = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[image], return_tensors="pt")
    t, h, w = batch["image_grid_thw"][0].tolist()
    assert bridge.image_grid_thw == (t, h, w)
    assert bridge.grid == merged_grid((t, h, w), 2) == (h // 2, w // 2)
    assert bridge.num_tokens == int((batch["input_ids"] == pipeline.vlm.image_token_id).sum())
    patch = pipeline.vlm.family.patch_size
    assert tuple(bridge.image.shape) == (3, h * patch, w * patch)
    assert (h * patch, w * patch) == resized_size(processor.image_processor, 333, 210)
    # each texture cell covers exactly one merged token's pixels
    assert texture_array(bridge.image[None], bridge.grid).shape == (1, 13, *bridge.grid)


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_resized_image_is_the_processor_input(testbed_pipeline, family):
    pipeline = testbed_pipeline(family)
    side = 2 * pipeline.vlm.family.patch_size
    image = noise(side * 5, side * 3, seed=4)  # already on the grid: the processor does not resample
    bridge = pipeline.token_grid(image)
    assert bridge.grid == (3, 5)
    assert (bridge.image - to_tensor(image)).abs().max().item() < 1e-5

    other = scene(side * 5 + 9, side * 3 - 7)  # resampled: still within [0, 1] and close to a plain resize
    resized = pipeline.token_grid(other).image
    assert resized.min() >= 0 and resized.max() <= 1
    reference = torch.nn.functional.interpolate(
        to_tensor(other)[None], size=resized.shape[1:], mode="bilinear", antialias=True, align_corners=False
    )[0]
    assert (resized - reference).abs().mean().item() < 0.03


def test_query_embedding_is_the_mean_input_embedding_of_the_question(testbed_pipeline):
    pipeline = testbed_pipeline()
    vlm = pipeline.vlm
    question = "Where is the red house?"
    ids = vlm.tokenizer(question, add_special_tokens=False)["input_ids"]
    table = vlm.model.get_input_embeddings().weight
    expected = table[ids].mean(dim=0)
    got = pipeline.question_embedding(question)
    assert got.shape == (vlm.hidden_size,) == (pipeline.scorer.query_dim,)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, pipeline.question_embedding("What colour is the car?"))


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl", "qwen3-vl"])
def test_the_resize_alone_gives_the_processors_grid_and_image(testbed_pipeline, family):
    image_processor = testbed_pipeline(family).vlm.processor.image_processor
    for image in (scene(333, 210), noise(1200, 900, seed=5), noise(64, 70, seed=6).convert("L")):
        full, resized = (
            token_grid(testbed_pipeline(family).vlm.processor, image),
            resized_token_grid(image_processor, image),
        )
        assert resized.grid == full.grid and resized.image_grid_thw == full.image_grid_thw
        assert resized.image.shape == full.image.shape
        assert (resized.image - full.image).abs().max().item() < 1e-6
