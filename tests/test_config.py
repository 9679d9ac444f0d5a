"""Settings from ARR_COC_* variables, the variant registry, and the HTTP error mapping."""

import json

import pytest
from bentoml.exceptions import InternalServerError
from pydantic import ValidationError

from arr_coc.errors import InvalidBudgetError, UnknownMethodError, UnknownVariantError
from arr_coc.pricing import PricingSettings
from arr_coc.settings import Settings
from arr_coc.variants import PERCENTS, VARIANTS, ad_hoc, get_variant
from front.errors import INTERNAL_DETAIL, error_response, status_for_kind
from front.schemas import AnswerRequestBody
from serving.settings import ServerSettings
from training_hooks.tracking.settings import TrackingSettings

LIBRARY_FIELDS = {
    "model",
    "testbed_family",
    "home",
    "scorer",
    "device",
    "dtype",
    "decode",
    "feature_cache_mb",
    "torch_threads",
    "warm_up",
    "warm_cache_tokens",
}
PRICING_FIELDS = {
    "price_gpu_s",
    "price_vcpu_s",
    "price_gib_s",
    "instance_gpus",
    "instance_vcpus",
    "instance_memory_gib",
}
TRACKING_FIELDS = {"wandb", "wandb_project", "wandb_window_s", "wandb_sample_rate", "deployment", "scorer_artifact"}
SERVER_FIELDS = {
    "api_key",
    "default_variant",
    "traffic",
    "max_image_bytes",
    "max_image_pixels",
    "max_question_chars",
    "max_new_tokens_limit",
    "default_max_new_tokens",
    "image_url_hosts",
    "max_concurrency",
    "stream_idle_timeout_s",
    "client_idle_timeout_s",
    "drain_timeout_s",
    "relevance_max_batch_size",
    "relevance_max_latency_ms",
    "vlm_max_batch_size",
    "vlm_max_latency_ms",
    "scheduler",
    "vlm_rows",
    "vlm_cache_tokens",
    "vlm_prefill_tokens",
    "relevance_workers",
    "vlm_workers",
    "runner_timeout_s",
    "relevance_gpu",
    "vlm_gpu",
}


def test_defaults_serve_the_testbed_on_cpu(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("ARR_COC_"):
            monkeypatch.delenv(key)
    settings = ServerSettings()
    assert settings.model == "" and settings.testbed_family == "qwen2.5-vl-vqa"
    assert settings.device == "auto" and settings.default_variant in VARIANTS
    assert settings.decode == "auto" and settings.warm_up


def test_environment_overrides(monkeypatch):
    monkeypatch.setenv("ARR_COC_MODEL", "Qwen/Qwen2.5-VL-3B-Instruct")
    monkeypatch.setenv("ARR_COC_VLM_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("ARR_COC_WANDB", "1")
    monkeypatch.setenv("ARR_COC_DECODE", "graph")
    settings = ServerSettings()
    assert settings.model == "Qwen/Qwen2.5-VL-3B-Instruct" and settings.vlm_max_batch_size == 16 and settings.wandb
    assert settings.decode == "graph"


@pytest.mark.parametrize(
    "key, value",
    [
        ("ARR_COC_VLM_MAX_BATCH_SIZE", "0"),
        ("ARR_COC_TESTBED_FAMILY", "llava"),
        ("ARR_COC_WANDB_SAMPLE_RATE", "2"),
        ("ARR_COC_DECODE", "fast"),
        ("ARR_COC_WARM_CACHE_TOKENS", "0"),
    ],
)
def test_bad_settings_are_refused(monkeypatch, key, value):
    monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError):
        ServerSettings()


def test_the_library_settings_hold_no_server_or_tracking_field():
    assert set(Settings.model_fields) == LIBRARY_FIELDS
    assert set(TrackingSettings.model_fields) == TRACKING_FIELDS
    assert set(PricingSettings.model_fields) == PRICING_FIELDS
    assert set(ServerSettings.model_fields) == LIBRARY_FIELDS | TRACKING_FIELDS | PRICING_FIELDS | SERVER_FIELDS
    assert not hasattr(Settings(), "api_key") and not hasattr(Settings(), "wandb_project")


def test_every_variable_still_reaches_the_server_settings(monkeypatch):
    monkeypatch.setenv("ARR_COC_API_KEY", "k1")
    monkeypatch.setenv("ARR_COC_WANDB_PROJECT", "elsewhere")
    monkeypatch.setenv("ARR_COC_SCORER_ARTIFACT", "scorer:v3")
    monkeypatch.setenv("ARR_COC_DRAIN_TIMEOUT_S", "2.5")
    monkeypatch.setenv("ARR_COC_SCHEDULER", "batch")
    monkeypatch.setenv("ARR_COC_VLM_GPU", "0.5")
    monkeypatch.setenv("ARR_COC_DEVICE", "cpu")
    settings = ServerSettings()
    assert settings.api_key.get_secret_value() == "k1" and settings.wandb_project == "elsewhere"
    assert settings.scorer_artifact == "scorer:v3" and settings.drain_timeout_s == 2.5
    assert settings.scheduler == "batch" and settings.vlm_gpu == 0.5 and settings.device == "cpu"
    assert TrackingSettings().wandb_project == "elsewhere" and Settings().device == "cpu"


def test_registry_has_every_method_at_every_budget():
    methods = {v.method for v in VARIANTS.values()}
    assert methods == {"none", "arr-coc", "uniform", "random", "divprune", "cdpruner"}
    assert PERCENTS == (3, 5, 10, 25, 50)
    post = [f"{m}-{p}" for m in ("arr-coc", "uniform", "random", "divprune", "cdpruner") for p in PERCENTS]
    pre = [f"{m}-pre-{p}" for m in ("arr-coc", "uniform", "random") for p in PERCENTS]
    assert list(VARIANTS) == ["full", *post, *pre, "arr-coc-auto", "arr-coc-pre-auto"]
    for name, method, budget, stage in [
        ("arr-coc-3", "arr-coc", 0.03, "post"),
        ("cdpruner-3", "cdpruner", 0.03, "post"),
        ("divprune-5", "divprune", 0.05, "post"),
        ("arr-coc-pre-3", "arr-coc", 0.03, "pre"),
        ("random-pre-5", "random", 0.05, "pre"),
        ("uniform-pre-3", "uniform", 0.03, "pre"),
    ]:
        variant = get_variant(name)
        assert (variant.name, variant.method, variant.budget, variant.stage) == (name, method, budget, stage)
        assert variant.as_config()["budget"] == budget
    assert get_variant("arr-coc-25").budget == 0.25 and get_variant("full").method == "none"
    assert get_variant("divprune-10").as_config()["method"] == "divprune"


def test_unknown_variant_and_bad_ad_hoc():
    with pytest.raises(UnknownVariantError):
        get_variant("nope")
    with pytest.raises(UnknownMethodError):
        ad_hoc("nope", 0.5)
    with pytest.raises(InvalidBudgetError):
        ad_hoc("uniform", 1.5)
    assert ad_hoc("uniform", 10).name == "uniform@10"


def test_status_codes_by_kind():
    assert status_for_kind("invalid_image") == 400
    assert status_for_kind("image_too_large") == 413
    assert status_for_kind("invalid_budget") == 422


def test_a_runner_failure_is_503_and_any_other_failure_500_in_both_shapes():
    response = error_response("/answer", InternalServerError("CUDA error at 0x7f00"))
    assert response.status_code == 503
    assert json.loads(response.body) == {
        "error": "runner_unavailable",
        "field": None,
        "detail": "a model runner failed: InternalServerError",
    }
    openai = json.loads(error_response("/v1/chat/completions", InternalServerError("x")).body)
    assert openai["error"]["type"] == "server_error" and openai["error"]["code"] == "runner_unavailable"
    response = error_response("/answer", KeyError("grid"))
    assert response.status_code == 500
    assert json.loads(response.body) == {"error": "internal", "field": None, "detail": INTERNAL_DETAIL}
    openai = json.loads(error_response("/v1/chat/completions", KeyError("grid")).body)
    assert openai["error"]["type"] == "server_error" and openai["error"]["code"] == "internal"


def test_validation_errors_name_the_top_level_field():
    with pytest.raises(ValidationError) as caught:
        AnswerRequestBody.model_validate({"image": "abc", "question": "q", "budget": True})
    response = error_response("/answer", caught.value)
    body = json.loads(response.body)
    assert response.status_code == 422 and body["error"] == "validation_error" and body["field"] == "budget"
    with pytest.raises(ValidationError) as caught:
        AnswerRequestBody.model_validate_json(b'{"image": "abc"')
    assert error_response("/answer", caught.value).status_code == 400


def test_error_details_carry_no_object_addresses():
    from PIL import UnidentifiedImageError

    from arr_coc.errors import InvalidImageError

    error = InvalidImageError(
        f"not a decodable image ({UnidentifiedImageError('cannot identify image file <_io.BytesIO object at 0x7f3a2c1b9e40>')})",
        field="image",
    )
    body = json.loads(error_response("/answer", error).body)
    assert "0x" not in body["detail"] and body["detail"].startswith("not a decodable image (cannot identify image file")


def test_the_cli_parser_loads_no_model_library():
    import subprocess
    import sys

    probe = (
        "import sys; from arr_coc_cli.main import build_parser; build_parser().parse_args(['answer', 'x.png', 'q']); "
        "print(sorted(m for m in ('torch', 'transformers', 'bentoml', 'wandb') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
