"""The vision-feature cache: keyed by pixels, bounded in bytes, and a second question skips the tower
and the texture with the answer an uncached run gives."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

import arr_coc.scorer as scorer_module
from arr_coc.vlm.feature_cache import FeatureCache, image_key
from arr_coc.vlm.pipeline import VLMPipeline
from arr_coc.vlm.pruning import VisionFeatures
from arr_coc.vlm.types import AnswerRequest, GenerationParams
from testkit.drawing import scene, shapes

pytestmark = pytest.mark.slow

QUESTIONS = ("Where is the red house?", "What is in the sky?", "How many windows are there?")


def features(rows: int, dim: int = 8) -> VisionFeatures:
    return VisionFeatures(torch.zeros(rows, dim), None)  # rows * dim * 4 bytes


def test_lru_bound_and_accounting():
    cache = FeatureCache(max_bytes=3 * 32 * 4)
    for key in "abc":
        cache.put(key, features(4))
    assert len(cache) == 3 and cache.nbytes == 3 * 128
    assert cache.get("a").features is not None  # a is now the most recent
    cache.put("d", features(4))
    assert cache.get("b").features is None and cache.get("a").features is not None, "b was least recently used"
    cache.put("a", texture=torch.zeros(13, 2, 2))  # completing an entry re-counts it and evicts to fit
    assert cache.nbytes <= cache.max_bytes
    cache.put("huge", features(1000))
    assert cache.get("huge").features is None, "an entry larger than the bound is not stored"
    assert (cache.hits, cache.misses) == (2, 2)


def test_off_and_bad_bounds():
    off = FeatureCache(0)
    off.put("a", features(4))
    assert not off.enabled and len(off) == 0
    with pytest.raises(ValueError):
        FeatureCache(-1)


def test_key_is_the_pixels_not_the_file():
    image = scene(120, 80)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    reloaded = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    assert image_key(reloaded) == image_key(image)
    changed = image.copy()
    changed.putpixel((3, 3), (1, 2, 3))
    assert image_key(changed) != image_key(image)
    assert image_key(image.resize((80, 120))) != image_key(image)


class Counter:
    def __init__(self, monkeypatch, owner, name):
        self.calls = 0
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)


def test_a_second_question_skips_the_tower_and_the_texture(testbed_pipeline, monkeypatch):
    uncached = testbed_pipeline()
    cached = VLMPipeline(uncached.vlm, uncached.scorer, decode="eager", feature_cache_mb=64)
    image = scene(300, 200)
    params = GenerationParams(max_new_tokens=8)
    requests = [AnswerRequest(image, QUESTIONS[0], "arr-coc", 0.25, params)]
    requests += [AnswerRequest(image.copy(), question, "divprune", 0.3, params) for question in QUESTIONS[1:]]
    expected = [uncached.answer(r) for r in requests]
    tower = Counter(monkeypatch, uncached.vlm.model, "get_image_features")
    texture = Counter(monkeypatch, scorer_module, "texture_and_pixels")
    got = [cached.answer(r) for r in requests]
    assert (tower.calls, texture.calls) == (1, 1), "the second and third questions are served from the cache"
    for one, other in zip(got, expected):
        assert one.token_ids == other.token_ids and torch.equal(one.kept, other.kept)
    assert (cached.feature_cache.hits, cached.feature_cache.misses) == (2, 1)


def test_pre_requests_run_the_tower_but_reuse_the_texture(testbed_pipeline, monkeypatch):
    uncached = testbed_pipeline()
    cached = VLMPipeline(uncached.vlm, uncached.scorer, decode="eager", feature_cache_mb=64)
    image = shapes(260, 180, seed=5)
    params = GenerationParams(max_new_tokens=6)
    pre = AnswerRequest(image, QUESTIONS[1], "arr-coc", 0.25, params, stage="pre")
    expected = uncached.answer(pre)
    cached.answer(AnswerRequest(image, QUESTIONS[0], "arr-coc", 0.5, params))
    texture = Counter(monkeypatch, scorer_module, "texture_and_pixels")
    result = cached.answer(pre)
    assert texture.calls == 0
    assert result.token_ids == expected.token_ids
    assert (cached.feature_cache.hits, cached.feature_cache.misses) == (0, 1), "pre lookups are not counted"


def test_a_batch_mixing_cached_and_new_images_answers_as_uncached(testbed_pipeline):
    uncached = testbed_pipeline("qwen3-vl")
    cached = VLMPipeline(uncached.vlm, uncached.scorer, decode="eager", feature_cache_mb=64)
    params = GenerationParams(max_new_tokens=6)
    seen = scene(300, 200)
    cached.answer(AnswerRequest(seen, QUESTIONS[0], "none", 1.0, params))
    batch = [
        AnswerRequest(seen, QUESTIONS[1], "cdpruner", 0.3, params),
        AnswerRequest(shapes(200, 260, seed=1), QUESTIONS[2], "arr-coc", 0.25, params),
        AnswerRequest(seen, QUESTIONS[2], "uniform", 0.4, params, stage="pre"),
    ]
    got = cached.answer_batch(batch)
    expected = [uncached.answer(r) for r in batch]
    assert [r.token_ids for r in got] == [r.token_ids for r in expected]
    assert cached.feature_cache.hits == 1
