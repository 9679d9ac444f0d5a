"""Static-cache decode: the same greedy ids as eager decode, buckets, fallbacks, and a step CUDA can capture."""

from __future__ import annotations

import logging

import pytest
import torch
from test_vlm_generation import QUESTION, mixed_requests

from arr_coc.vlm import static_decoding
from arr_coc.vlm.pipeline import VLMPipeline
from arr_coc.vlm.static_decoding import (
    StaticDecoder,
    StepBuffers,
    batch_bucket,
    length_bucket,
    resolve_decode,
)
from arr_coc.vlm.types import AnswerRequest, GenerationParams
from testkit.drawing import scene, shapes

FAMILIES = ["qwen2-vl", "qwen2.5-vl", "qwen3-vl"]


@pytest.fixture(scope="module")
def static_pipeline(testbed_pipeline):
    """``static_pipeline(family)``: the family's eager testbed pipeline's model, decoding with a static cache."""
    made = {}

    def get(family: str = "qwen2.5-vl") -> VLMPipeline:
        if family not in made:
            eager = testbed_pipeline(family)
            made[family] = VLMPipeline(eager.vlm, eager.scorer, decode="static")
        return made[family]

    return get


def greedy_requests() -> list[AnswerRequest]:
    """Mixed sizes, budgets and prompt lengths (left padding), one with a stop string, all greedy."""
    requests = [r for r in mixed_requests() if r.generation.temperature == 0.0]
    requests.append(AnswerRequest(scene(200, 300), "Is it?", "uniform", 0.5, GenerationParams(max_new_tokens=14)))
    return requests


@pytest.mark.parametrize("family", FAMILIES)
def test_static_gives_the_eager_greedy_ids(testbed_pipeline, static_pipeline, family):
    eager, static = testbed_pipeline(family), static_pipeline(family)
    assert eager.decode == "eager" and static.decode == "static"
    requests = greedy_requests()
    expected = eager.answer_batch(requests)
    got = static.answer_batch(requests)
    assert [r.token_ids for r in got] == [r.token_ids for r in expected]
    assert [r.answer for r in got] == [r.answer for r in expected]
    assert len({r.token_ids[0] for r in expected}) > 1, "the testbed answers differ per request"
    assert batch_bucket(len(requests)) in [batch for batch, _ in static.static.buckets]
    alone = static.answer(requests[0])
    assert alone.token_ids == expected[0].token_ids


def test_stop_strings_and_streams_on_the_static_path(testbed_pipeline, static_pipeline):
    eager, static = testbed_pipeline(), static_pipeline()
    image = shapes(260, 180, seed=4)
    free = eager.answer(AnswerRequest(image, QUESTION, "none", 1.0, GenerationParams(max_new_tokens=16)))
    stop = free.answer[3:5]
    params = GenerationParams(max_new_tokens=16, stop=(stop,))
    request = AnswerRequest(image, QUESTION, "none", 1.0, params)
    stopped = static.answer(request)
    assert stopped.answer == free.answer[: free.answer.index(stop)]
    stream = static.stream(request)
    assert "".join(stream) == stopped.answer and stream.result.token_ids == stopped.token_ids


def test_a_batch_uses_the_smallest_bucket_and_filler_rows_change_nothing(static_pipeline):
    static = static_pipeline()
    requests = greedy_requests()[:3]
    decoder = StaticDecoder(static.vlm, graphs=False)
    pipeline = VLMPipeline(static.vlm, static.scorer, decode="static")
    pipeline.static = decoder
    results = pipeline.answer_batch(requests)
    assert [batch for batch, _ in decoder.buckets] == [4]  # 3 rows + 1 filler
    assert [r.token_ids for r in results] == [static.answer(r).token_ids for r in requests]


def test_past_the_largest_bucket_and_when_busy_it_decodes_eagerly(testbed_pipeline, monkeypatch):
    eager = testbed_pipeline()
    pipeline = VLMPipeline(eager.vlm, eager.scorer, decode="static")
    requests = greedy_requests()[:3]
    expected = [r.token_ids for r in eager.answer_batch(requests)]

    monkeypatch.setattr(static_decoding, "BATCH_BUCKETS", (1, 2))
    assert [r.token_ids for r in pipeline.answer_batch(requests)] == expected
    assert pipeline.static.buckets == []

    monkeypatch.undo()
    busy = pipeline.static.buffers(3, 300)
    with busy.lock:  # another generation holds this bucket
        assert [r.token_ids for r in pipeline.answer_batch(requests)] == expected


def test_an_abandoned_stream_frees_its_bucket(static_pipeline):
    static = static_pipeline()
    request = AnswerRequest(scene(240, 160), QUESTION, "none", 1.0, GenerationParams(max_new_tokens=24))
    stream = iter(static.stream(request))
    next(stream)
    busy = [b for b in static.static._buckets.values() if b.lock.locked()]
    assert len(busy) == 1
    stream.close()
    assert not busy[0].lock.locked()


def test_a_failed_graph_capture_falls_back_with_a_warning(testbed_pipeline, monkeypatch, caplog):
    eager = testbed_pipeline()
    pipeline = VLMPipeline(eager.vlm, eager.scorer, decode="static")
    pipeline.static.graphs = True  # as on CUDA

    def broken_capture(self, model, pool):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(StepBuffers, "capture", broken_capture)
    requests = greedy_requests()[:2]
    with caplog.at_level(logging.WARNING, logger="arr_coc.vlm.static_decoding"):
        results = pipeline.answer_batch(requests)
    assert "capture of the decode step failed" in caplog.text
    assert pipeline.static.graphs is False
    assert [r.token_ids for r in results] == [r.token_ids for r in eager.answer_batch(requests)]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_decode_step_traces_as_one_graph(testbed_pipeline, family):
    """No Python branch on tensor values and no host read inside the step: what CUDA graph capture needs."""
    vlm = testbed_pipeline(family).vlm
    buffers = StepBuffers(vlm, 2, 256)
    for layer in buffers.cache.layers:
        layer.cumulative_length.fill_(5)
    torch._dynamo.reset()
    step = torch.compile(buffers.step, backend="eager", fullgraph=True)
    with torch.no_grad():
        logits = step(vlm.model)
    assert logits.shape == (2, vlm.model.config.text_config.vocab_size)
    assert int(buffers.cache.layers[0].cumulative_length) == 6 and int(buffers.positions[0, 0, 0]) == 1


def test_buckets():
    assert [batch_bucket(n) for n in (1, 2, 3, 5, 16, 17, 32, 33)] == [1, 2, 4, 8, 16, 32, 32, None]
    assert [length_bucket(n) for n in (1, 256, 257, 600, 1025)] == [256, 256, 512, 1024, 2048]


def test_decode_modes():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_decode("auto", cpu) == "eager" and resolve_decode("auto", cuda) == "graph"
    assert resolve_decode("static", cpu) == "static" and resolve_decode("eager", cuda) == "eager"
    with pytest.warns(UserWarning, match="CUDA graphs need a CUDA device"):
        assert resolve_decode("graph", cpu) == "static"
    with pytest.raises(ValueError, match="unknown decode mode"):
        resolve_decode("fast", cpu)


def test_buckets_made_in_inference_mode_serve_outside_it(testbed_pipeline):
    eager = testbed_pipeline()
    pipeline = VLMPipeline(eager.vlm, eager.scorer, decode="static")
    request = greedy_requests()[0]
    with torch.inference_mode():
        inside = pipeline.answer(request)
    outside = pipeline.answer(request)
    assert inside.token_ids == outside.token_ids == eager.answer(request).token_ids


def test_warm_up_runs_every_stage_and_captures_each_bucket(testbed_pipeline, monkeypatch):
    eager = testbed_pipeline()
    pipeline = VLMPipeline(eager.vlm, eager.scorer, decode="static")
    pipeline.static.graphs = True  # as on CUDA; the capture itself is recorded, not run
    captured = []
    monkeypatch.setattr(StepBuffers, "capture", lambda self, model, pool: captured.append((self.batch, self.length)))
    spent = pipeline.warm_up((1, 3), cache_tokens=600)
    assert sorted(spent) == [1, 3] and all(ms > 0 for ms in spent.values())
    assert set(captured) == {(b, length) for b in (1, 2, 4) for length in (256, 512, 1024)}
    assert len(captured) == len(set(captured)), "each bucket is captured once"


def test_sampled_rows_draw_the_same_tokens_on_the_static_path(testbed_pipeline, static_pipeline):
    eager, static = testbed_pipeline("qwen3-vl"), static_pipeline("qwen3-vl")
    params = GenerationParams(max_new_tokens=10, temperature=0.9, top_p=0.8, seed=5)
    requests = [AnswerRequest(scene(220, 160), QUESTION, "arr-coc", 0.5, params), greedy_requests()[1]]
    expected, got = eager.answer_batch(requests), static.answer_batch(requests)
    assert [r.token_ids for r in got] == [r.token_ids for r in expected]
    reseeded = AnswerRequest(scene(220, 160), QUESTION, "arr-coc", 0.5, GenerationParams(**{**vars(params), "seed": 6}))
    assert static.answer(reseeded).token_ids != expected[0].token_ids
