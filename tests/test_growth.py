"""Growing a trained testbed: more layers, blocks and MLP units, the same outputs."""

from __future__ import annotations

import pytest
import torch

from arr_coc.errors import InvalidConfigError
from arr_coc.tasks.shapes_vqa import ShapesVQA
from arr_coc.training.data import processor_grid
from arr_coc.vlm.growth import Growth, grow_model, grown_config
from arr_coc.vlm.inputs import encode_request
from arr_coc.vlm.loading import load_vlm
from arr_coc.vlm.testbed import EMBEDDED_MODEL

GROWTH_FIELDS = ("llm_layers", "llm_mlp", "vision_depth", "vision_mlp")


@pytest.fixture(scope="module")
def trained():
    return load_vlm(EMBEDDED_MODEL, device="cpu", dtype="fp32")


def _logits(model, vlm, sample) -> torch.Tensor:
    encoded = encode_request(vlm.processor, sample.image, sample.question, vlm.context_length, 4)
    with torch.no_grad():
        return model(
            input_ids=encoded.input_ids[None],
            pixel_values=encoded.pixel_values,
            image_grid_thw=encoded.image_grid_thw.reshape(1, 3),
            mm_token_type_ids=encoded.mm_token_type_ids[None],
        ).logits[0]


def test_a_grown_model_computes_what_the_original_did(trained) -> None:
    text, vision = trained.model.config.text_config, trained.model.config.vision_config
    sizes = (text.num_hidden_layers + 2, text.intermediate_size + 64, vision.depth + 2, vision.intermediate_size + 32)
    grown = grow_model(trained.model, Growth(**dict(zip(GROWTH_FIELDS, sizes))), seed=3).eval()
    assert (
        len(grown.model.language_model.layers),
        grown.config.text_config.intermediate_size,
        len(grown.model.visual.blocks),
        grown.config.vision_config.intermediate_size,
    ) == sizes
    assert sum(p.numel() for p in grown.parameters()) > sum(p.numel() for p in trained.model.parameters())
    samples = ShapesVQA(3, "heldout", 0, processor_grid(trained.processor))
    for sample in samples:
        before, after = _logits(trained.model, trained, sample), _logits(grown, trained, sample)
        torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    new_layer = grown.model.language_model.layers[-1]
    assert new_layer.self_attn.q_proj.weight.abs().sum() > 0, "new weights are random where they can be"
    assert new_layer.self_attn.o_proj.weight.abs().sum() == 0 and new_layer.mlp.down_proj.weight.abs().sum() == 0
    widened = grown.model.language_model.layers[0].mlp.down_proj.weight
    assert widened[:, text.intermediate_size :].abs().sum() == 0


def test_grown_vision_blocks_alternate_ending_in_full_attention(trained) -> None:
    vision = trained.model.config.vision_config
    config = grown_config(trained.model.config, Growth(vision_depth=vision.depth + 4))
    added = config.vision_config.fullatt_block_indexes[len(vision.fullatt_block_indexes) :]
    assert added == [vision.depth + 1, vision.depth + 3]
    assert config.text_config.num_hidden_layers == trained.model.config.text_config.num_hidden_layers
    assert config.vision_config.depth == vision.depth + 4 and trained.model.config.vision_config.depth == vision.depth


def test_growth_is_deterministic_for_a_seed(trained) -> None:
    layers = trained.model.config.text_config.num_hidden_layers
    growth = Growth(llm_layers=layers + 1)
    first, again, other = (grow_model(trained.model, growth, seed=s).state_dict() for s in (1, 1, 2))
    name = f"model.language_model.layers.{layers}.self_attn.q_proj.weight"
    assert torch.equal(first[name], again[name]) and not torch.equal(first[name], other[name])


@pytest.mark.parametrize("field", GROWTH_FIELDS)
def test_shrinking_is_a_typed_error(trained, field) -> None:
    with pytest.raises(InvalidConfigError) as caught:
        grow_model(trained.model, Growth(**{field: 1}), seed=0)
    assert caught.value.field == field and "shrink" in str(caught.value)
