"""Settings from ARR_COC_* variables, the variant registry, and the HTTP error mapping."""

import json

import pytest
from pydantic import ValidationError

from arr_coc.errors import InvalidBudgetError, UnknownMethodError, UnknownVariantError
from arr_coc.settings import Settings
from arr_coc.variants import PERCENTS, VARIANTS, ad_hoc, get_variant
from front.errors import error_response, status_for_kind
from front.schemas import AnswerRequestBody


def test_defaults_serve_the_testbed_on_cpu(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("ARR_COC_"):
            monkeypatch.delenv(key)
    settings = Settings()
    assert settings.model == "" and settings.testbed_family == "qwen2.5-vl-vqa"
    assert settings.device == "auto" and settings.default_variant in VARIANTS
    assert settings.decode == "auto" and settings.warm_up


def test_environment_overrides(monkeypatch):
    monkeypatch.setenv("ARR_COC_MODEL", "Qwen/Qwen2.5-VL-3B-Instruct")
    monkeypatch.setenv("ARR_COC_VLM_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("ARR_COC_WANDB", "1")
    monkeypatch.setenv("ARR_COC_DECODE", "graph")
    settings = Settings()
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
        Settings()


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


def test_unexpected_failure_is_503_in_both_shapes():
    response = error_response("/answer", RuntimeError("CUDA error at 0x7f00"))
    assert response.status_code == 503
    assert json.loads(response.body) == {
        "error": "runner_unavailable",
        "field": None,
        "detail": "a model runner failed: RuntimeError",
    }
    openai = json.loads(error_response("/v1/chat/completions", RuntimeError("x")).body)
    assert openai["error"]["type"] == "server_error" and openai["error"]["code"] == "runner_unavailable"


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
