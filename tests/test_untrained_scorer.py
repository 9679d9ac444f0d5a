"""A model served with no trained scorer never selects with random weights in silence: the default variant
falls back to a training-free method, and every surface says the arr-coc variants' scorer is untrained."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from arr_coc.variants import VARIANTS
from arr_coc.vocabulary import TRAIN_SCORER_COMMAND
from front import openai_chat
from front.pipeline import Job, Pipeline
from front.schemas import AnswerRequestBody
from model_store.sources import scorer_source
from serving.settings import TRAINING_FREE_DEFAULT, ServerSettings
from serving.wire import AnswerOutput, ScoreOutput
from training_hooks.tracking.service_tracking import Tracking

REAL = "Qwen/Qwen2.5-VL-3B-Instruct"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("ARR_COC_"):
            monkeypatch.delenv(key)


@pytest.mark.parametrize(
    "env, trained",
    [
        ({}, True),  # the shipped testbed with its shipped scorer
        ({"ARR_COC_MODEL": REAL}, False),
        ({"ARR_COC_TESTBED_FAMILY": "qwen3-vl"}, False),  # a random-weight testbed
        ({"ARR_COC_MODEL": REAL, "ARR_COC_SCORER": "runs/scorer"}, True),
    ],
)
def test_the_default_variant_is_training_free_without_a_trained_scorer(monkeypatch, env, trained):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = ServerSettings()
    assert settings.scorer_trained is trained and settings.scorer_state == ("trained" if trained else "untrained")
    assert settings.default_variant == ("arr-coc-25" if trained else TRAINING_FREE_DEFAULT)
    assert settings.training_free_default is not trained
    assert (scorer_source(settings) is not None) is trained, "the runners load what the settings say"
    notice = settings.untrained_scorer_notice()
    assert (notice is None) is trained
    if not trained:
        assert "untrained" in notice and TRAINING_FREE_DEFAULT in notice and "arr-coc distill-scorer" in notice


def test_the_fallback_is_the_strongest_training_free_variant_at_the_default_budget():
    fallback = VARIANTS[TRAINING_FREE_DEFAULT]
    default = VARIANTS[ServerSettings.model_fields["default_variant"].default]
    assert fallback.method == "divprune" and fallback.budget == default.budget and fallback.stage == "post"


def test_an_explicit_default_variant_is_kept_and_named_in_the_notice(monkeypatch):
    monkeypatch.setenv("ARR_COC_MODEL", REAL)
    monkeypatch.setenv("ARR_COC_DEFAULT_VARIANT", "arr-coc-10")
    settings = ServerSettings()
    assert settings.default_variant == "arr-coc-10" and not settings.training_free_default
    notice = settings.untrained_scorer_notice()
    assert "arr-coc-10 (ARR_COC_DEFAULT_VARIANT)" in notice
    assert TRAIN_SCORER_COMMAND.replace("<id>", REAL) in notice  # the command, for this model


def untrained_pipeline() -> tuple[Pipeline, list]:
    recorded = []
    tracking = SimpleNamespace(record=lambda variant, latency_ms, **fields: recorded.append((variant, fields)))
    return Pipeline(None, None, tracking=tracking, settings=ServerSettings(model=REAL)), recorded


def answered(pipeline: Pipeline, variant: str | None):
    job = Job(pipeline.pick_variant(AnswerRequestBody(image="x", question="q", variant=variant)))
    job.scored = ScoreOutput(grid=(2, 2), relevance=[0.1, 0.2, 0.3, 0.4])
    output = AnswerOutput(answer="red", kept=[0, 3], total_tokens=4, grid=(2, 2), finish_reason="eos")
    return pipeline.answered(job, output)


def test_answers_say_which_scorer_selected(caplog):
    with caplog.at_level(logging.WARNING, logger="arr_coc.service"):
        pipeline, _ = untrained_pipeline()
    assert any("no trained relevance scorer" in message for message in caplog.messages), "one start-up line"
    default = answered(pipeline, None)
    assert default.variant == TRAINING_FREE_DEFAULT and default.scorer is None  # divprune reads no scorer
    named = answered(pipeline, "arr-coc-25")
    assert named.variant == "arr-coc-25" and named.scorer == "untrained"
    trained = Pipeline(None, None, tracking=pipeline.tracking, settings=ServerSettings())
    assert answered(trained, None).variant == "arr-coc-25" and answered(trained, None).scorer == "trained"


def test_openai_shapes_carry_the_scorer():
    listed = openai_chat.model_list(ServerSettings(model=REAL))
    assert listed["arr_coc"]["default_variant"] == TRAINING_FREE_DEFAULT and listed["arr_coc"]["scorer"] == "untrained"
    assert "arr-coc distill-scorer" in listed["arr_coc"]["notice"]
    details = {model["id"]: model["arr_coc"] for model in listed["data"]}
    assert details["arr-coc-25"]["scorer"] == "untrained" and details["arr-coc-pre-auto"]["scorer"] == "untrained"
    assert "scorer" not in details["divprune-25"] and "scorer" not in details["full"]
    shipped = openai_chat.model_list(ServerSettings())
    assert shipped["arr_coc"] == {"default_variant": "arr-coc-25", "traffic": None, "scorer": "trained", "notice": None}
    output = AnswerOutput(answer="red", kept=[0], total_tokens=4, finish_reason="eos")
    assert openai_chat.completion(output, "arr-coc-25", "id", "untrained")["arr_coc"] == {"scorer": "untrained"}
    last = openai_chat.chunk("c", "arr-coc-25", {}, "stop", output, "untrained")
    assert last["arr_coc"] == {"scorer": "untrained"} and "arr_coc" not in openai_chat.chunk("c", "m", {"content": "r"})


def test_serve_runs_record_the_scorer():
    untrained = Tracking(ServerSettings(model=REAL)).run_config("arr-coc-25")
    assert untrained["scorer"] == "untrained" and untrained["scorer_state"] == "untrained"
    shipped = Tracking(ServerSettings()).run_config("arr-coc-25")
    assert shipped["scorer"] == "testbed:qwen2.5-vl-vqa" and shipped["scorer_state"] == "trained"
    chosen = Tracking(ServerSettings(model=REAL, scorer="runs/scorer")).run_config("divprune-25")
    assert chosen["scorer"] == "runs/scorer" and chosen["scorer_state"] == "trained"
