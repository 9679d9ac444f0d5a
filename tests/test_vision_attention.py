"""The packed vision attention: one SDPA call per tower layer, equal to stock SDPA run sequence by sequence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_pre_encoder import encoded, random_subset
from test_vlm_equivalence import stock_tower

from arr_coc.vlm import vision_attention as packed_module
from arr_coc.vlm.pre_encoder import encode_kept
from arr_coc.vlm.pruning import encode_images
from arr_coc.vlm.vision_attention import PACKED_VISION_ATTENTION, packed_attention
from testkit.drawing import scene, shapes

FAMILIES = ["qwen2-vl", "qwen2.5-vl", "qwen3-vl"]


def per_sequence(query, key, value, bounds):
    """Stock reference: SDPA on each sequence alone. ``[1, H, T, D]`` -> ``[1, T, H, D]``."""
    outs = [
        F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b])
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())
    ]
    return torch.cat(outs, dim=2).transpose(1, 2)


@pytest.mark.parametrize("lengths", [[5, 1, 64, 17, 64], [16, 16, 16, 16, 16]], ids=["uneven", "one-length"])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
def test_packed_equals_sdpa_sequence_by_sequence(lengths, dtype, tolerance):
    bounds = F.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32)
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(1, 4, sum(lengths), 16, generator=generator).to(dtype) for _ in range(3))
    packed, weights = packed_attention(
        None, query, key, value, None, scaling=16**-0.5, cu_seq_lens_q=bounds, max_length_q=max(lengths)
    )
    assert weights is None and packed.shape == (1, sum(lengths), 4, 16)
    reference = per_sequence(query.float(), key.float(), value.float(), bounds)
    assert (packed.float() - reference).abs().max().item() <= tolerance
    # a token never attends across its sequence: changing the third sequence leaves the others alone
    start, end = bounds[2].item(), bounds[3].item()
    value[:, :, start:end] = 100.0
    moved, _ = packed_attention(None, query, key, value, None, cu_seq_lens_q=bounds, max_length_q=max(lengths))
    assert torch.equal(moved[:, :start], packed[:, :start]) and torch.equal(moved[:, end:], packed[:, end:])
    assert not torch.equal(moved[:, start:end], packed[:, start:end])


def test_packed_attention_needs_the_varlen_call():
    states = torch.zeros(1, 2, 3, 4)
    with pytest.raises(ValueError, match="cu_seq_lens_q"):
        packed_attention(None, states, states, states, None)


@pytest.fixture
def attention_calls(monkeypatch):
    """Counts packed attention calls and stock per-sequence SDPA calls made by the tower."""
    calls = {"packed": 0, "sdpa": 0}
    packed = packed_module.packed_attention
    sdpa = F.scaled_dot_product_attention

    def counting_packed(*args, **kwargs):
        calls["packed"] += 1
        return packed(*args, **kwargs)

    def counting_sdpa(*args, **kwargs):
        calls["sdpa"] += 1
        return sdpa(*args, **kwargs)

    from transformers import AttentionInterface

    monkeypatch.setitem(AttentionInterface._global_mapping, PACKED_VISION_ATTENTION, counting_packed)
    monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)
    return calls


@pytest.mark.parametrize("family", FAMILIES)
def test_the_served_tower_is_the_stock_tower_in_one_call_per_layer(testbed_pipeline, family, attention_calls):
    """Two images of different sizes, then kept subsets (uneven windows): stock features, one call per layer."""
    vlm = testbed_pipeline(family).vlm
    visual = vlm.model.model.visual
    assert visual.config._attn_implementation == PACKED_VISION_ATTENTION  # what load_vlm sets
    inputs = encoded(vlm, scene(300, 200), shapes(200, 260, seed=1))
    pixels, grids = [e.pixel_values for e in inputs], [e.image_grid_thw for e in inputs]
    counts = [p.shape[0] // 4 for p in pixels]
    kept = [random_subset(counts[0], counts[0] // 3, seed=4), random_subset(counts[1], counts[1] // 5, seed=5)]
    with torch.no_grad():
        with stock_tower(vlm):
            stock = encode_images(vlm, pixels, grids)
            stock_kept = encode_kept(vlm, pixels, grids, kept)
        stock_calls = attention_calls["sdpa"]
        attention_calls["sdpa"] = 0
        served = encode_images(vlm, pixels, grids)
        assert attention_calls["packed"] == len(visual.blocks)
        served_kept = encode_kept(vlm, pixels, grids, kept)
    assert attention_calls["packed"] == 2 * len(visual.blocks)
    assert attention_calls["sdpa"] == 2 * len(visual.blocks)  # the packed calls' own SDPA, one each
    assert stock_calls > attention_calls["sdpa"]  # stock: one per image (and window) per layer
    for ours, theirs in zip(served + served_kept, stock + stock_kept):
        assert torch.allclose(ours.features, theirs.features, atol=1e-5)
        for x, y in zip(ours.deepstack or [], theirs.deepstack or []):
            assert torch.allclose(x, y, atol=1e-5)
