"""Pruned generation against the stock model, for every family's testbed model.

At a 100% budget the answering path must be the stock model: same greedy ids as
``model.generate`` on the stock processor inputs, same prefill logits. With
pruning, the LLM must get the stock M-RoPE ids at the kept positions (never
renumbered), a sequence shorter by exactly N - K, the stock features of the kept
tokens (and Qwen3-VL's DeepStack features at the same indices), and its cached
decode must equal a recompute without cache.
"""

from __future__ import annotations

import pytest
import torch

from arr_coc.vlm.decoding import prefill
from arr_coc.vlm.pruning import LLMRow
from arr_coc.vlm.types import AnswerRequest, GenerationParams
from arr_coc.vlm.vision_attention import vision_attention
from testkit.drawing import scene, shapes

pytestmark = pytest.mark.slow

FAMILIES = ["qwen2-vl", "qwen2.5-vl", "qwen3-vl"]
QUESTION = "What is in the image?"


def stock_inputs(vlm, image, question=QUESTION):
    """The processor's own inputs, built here without any arr_coc helper, on the model's device."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = vlm.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return vlm.processor(text=[text], images=[image], return_tensors="pt").to(vlm.device)


def stock_tower(vlm):
    """The stock tower inside the block: transformers' SDPA per image or window, not the packed call we serve."""
    return vision_attention(vlm.model.model.visual, "sdpa")


def stock_greedy_ids(vlm, image, max_new_tokens: int = 16) -> list[int]:
    """Stock ``generate``'s greedy answer ids for ``image`` and ``QUESTION``, end token excluded."""
    inputs = stock_inputs(vlm, image)
    with torch.no_grad(), stock_tower(vlm):
        generated = vlm.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return trim_at_eos(generated[0, inputs["input_ids"].shape[1] :].tolist(), vlm.eos_token_ids)


def stock_positions(vlm, inputs) -> torch.Tensor:
    """``[3, L]`` M-RoPE ids of the full stock prompt."""
    positions, _ = vlm.model.model.get_rope_index(
        inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"]
    )
    return positions[:, 0]


class ForwardSpy:
    """Records the keyword arguments and logits of every forward of the model."""

    def __init__(self, model, monkeypatch):
        self.calls: list[dict] = []
        original = model.forward

        def spy(*args, **kwargs):
            output = original(*args, **kwargs)
            self.calls.append({**kwargs, "logits": output.logits.detach().clone()})
            return output

        monkeypatch.setattr(model, "forward", spy)


def trim_at_eos(ids: list[int], eos: tuple[int, ...]) -> list[int]:
    for i, token in enumerate(ids):
        if token in eos:
            return ids[:i]
    return ids


@pytest.mark.parametrize("family", FAMILIES)
def test_full_budget_greedy_ids_equal_stock_generate(testbed_pipeline, family):
    pipeline = testbed_pipeline(family)
    vlm = pipeline.vlm
    image = scene(200, 150)
    inputs = stock_inputs(vlm, image)
    stock = stock_greedy_ids(vlm, image)
    assert len(stock) >= 4  # a meaningful comparison, not an immediate end of sequence

    params = GenerationParams(max_new_tokens=16)
    for method, budget in [("none", 0.1), ("arr-coc", 1.0), ("divprune", 1.0)]:
        result = pipeline.answer(AnswerRequest(image, QUESTION, method=method, budget=budget, generation=params))
        assert result.token_ids == stock, method
        assert result.kept_tokens == result.total_tokens == int((inputs["mm_token_type_ids"] == 1).sum())


@pytest.mark.parametrize("family", FAMILIES)
def test_full_budget_prefill_logits_match_stock(testbed_pipeline, family):
    pipeline = testbed_pipeline(family)
    vlm = pipeline.vlm
    image = shapes(150, 220, seed=2)
    with torch.no_grad(), stock_tower(vlm):
        stock_logits = vlm.model(**stock_inputs(vlm, image)).logits[0]
    prepared = pipeline.prepare([AnswerRequest(image, QUESTION, method="none")], {})[0]
    output, _ = prefill(vlm, [prepared.row], logits_to_keep=0)
    assert output.logits.shape[1:] == stock_logits.shape
    assert (output.logits[0] - stock_logits).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    ("family", "method", "budget"),
    [
        ("qwen2-vl", "arr-coc", 0.3),
        ("qwen2.5-vl", "cdpruner", 7),
        ("qwen3-vl", "random", 0.5),
        ("qwen3-vl", "divprune", 5),
    ],
)
def test_pruned_llm_inputs_are_the_stock_ones_at_kept_positions(testbed_pipeline, monkeypatch, family, method, budget):
    pipeline = testbed_pipeline(family)
    vlm = pipeline.vlm
    image = scene(230, 170, seed=1)
    inputs = stock_inputs(vlm, image)
    spy = ForwardSpy(vlm.model, monkeypatch)
    result = pipeline.answer(
        AnswerRequest(image, QUESTION, method=method, budget=budget, generation=GenerationParams(max_new_tokens=5))
    )

    ids = inputs["input_ids"][0]
    image_slots = torch.nonzero(ids == vlm.image_token_id).flatten()
    n, k = result.total_tokens, result.kept_tokens
    assert image_slots.numel() == n and 0 < k < n
    keep = torch.ones_like(ids, dtype=torch.bool)
    keep[image_slots] = False
    keep[image_slots[result.kept]] = True

    first = spy.calls[0]
    assert first["input_ids"].shape == (1, ids.numel() - (n - k))
    assert torch.equal(first["input_ids"][0], ids[keep])
    positions = stock_positions(vlm, inputs)
    assert first["position_ids"].shape == (3, 1, ids.numel() - (n - k))
    assert torch.equal(first["position_ids"][:, 0], positions[:, keep])

    # The features fed in are the stock merger outputs (and DeepStack maps) of the kept tokens.
    with torch.no_grad(), stock_tower(vlm):
        stock_vision = vlm.model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    fed = first["mm_encoder_outputs"]["image"]
    assert torch.allclose(fed.pooler_output[0], stock_vision.pooler_output[0][result.kept], atol=1e-6)
    if vlm.family.deepstack:
        assert len(fed.deepstack_features) == len(stock_vision.deepstack_features) == 2
        for ours, stock in zip(fed.deepstack_features, stock_vision.deepstack_features):
            assert torch.allclose(ours[0], stock[0][result.kept], atol=1e-6)

    # Decode steps continue from the stock position of the last prompt token.
    last = int(positions[:, -1].max())
    assert len(spy.calls) >= 2
    for step, call in enumerate(spy.calls[1:]):
        assert call["position_ids"].shape == (3, 1, 1)
        assert (call["position_ids"] == last + 1 + step).all()


@pytest.mark.parametrize(
    ("family", "method"), [("qwen2-vl", "uniform"), ("qwen2.5-vl", "arr-coc"), ("qwen3-vl", "cdpruner")]
)
def test_cached_decode_equals_no_cache_recompute(testbed_pipeline, monkeypatch, family, method):
    pipeline = testbed_pipeline(family)
    vlm = pipeline.vlm
    request = AnswerRequest(
        shapes(260, 180, seed=4), QUESTION, method=method, budget=0.4, generation=GenerationParams(max_new_tokens=10)
    )
    spy = ForwardSpy(vlm.model, monkeypatch)
    result = pipeline.answer(request)
    fed = [call["input_ids"][0, -1].item() for call in spy.calls[1:]]  # tokens fed back, in order
    cached_logits = torch.cat([call["logits"][0, -1:] for call in spy.calls])  # [steps, V]
    assert len(fed) >= 3 and result.token_ids[: len(fed)] == fed

    row = pipeline.prepare([request], {})[0].row
    steps = len(fed)
    extra = torch.tensor(fed)
    last = int(row.positions[:, -1].max())
    full = LLMRow(
        input_ids=torch.cat([row.input_ids, extra]),
        positions=torch.cat([row.positions, (last + 1 + torch.arange(steps)).expand(3, -1)], dim=1),
        vision=row.vision,
    )
    monkeypatch.undo()
    output, _ = prefill(vlm, [full], logits_to_keep=0)
    recomputed = output.logits[0, row.length - 1 : row.length - 1 + steps + 1]
    assert recomputed.shape == cached_logits.shape
    assert (recomputed - cached_logits).abs().max().item() <= 1e-4
    assert recomputed.argmax(-1)[: len(result.token_ids)].tolist() == result.token_ids


def test_qwen3_deepstack_is_applied_at_the_kept_tokens(testbed_pipeline):
    """An independent reference: inputs_embeds + DeepStack maps sliced by hand, through the language model."""
    pipeline = testbed_pipeline("qwen3-vl")
    vlm = pipeline.vlm
    image = scene(200, 200, seed=5)
    prepared = pipeline.prepare([AnswerRequest(image, QUESTION, method="arr-coc", budget=0.3)], {})[0]
    ours = prefill(vlm, [prepared.row], logits_to_keep=0)[0].logits[0]

    inputs = stock_inputs(vlm, image)
    with torch.no_grad():
        vision = vlm.model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        ids = prepared.row.input_ids[None]
        mask = ids == vlm.image_token_id
        embeds = vlm.model.get_input_embeddings()(ids).clone()
        embeds[mask] = vision.pooler_output[0][prepared.kept]
        deepstack = [layer[0][prepared.kept] for layer in vision.deepstack_features]

        def reference(with_deepstack: bool) -> torch.Tensor:
            hidden = vlm.model.model.language_model(
                inputs_embeds=embeds,
                position_ids=prepared.row.positions[:, None],
                visual_pos_masks=mask if with_deepstack else None,
                deepstack_visual_embeds=deepstack if with_deepstack else None,
            ).last_hidden_state
            return vlm.model.lm_head(hidden)[0]

        assert (ours - reference(True)).abs().max().item() <= 1e-5
        assert (ours - reference(False)).abs().max().item() > 1e-3
