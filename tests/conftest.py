"""Shared fixtures: the offline testbed models, built once per test session.

``testbed_dir(family)`` returns a checkpoint directory of the tiny ``family``
model (``qwen2-vl``, ``qwen2.5-vl``, ``qwen3-vl``) built into a session temp dir;
``testbed_pipeline(family)`` a loaded :class:`VLMPipeline` on CPU (fp32) with the
untrained seeded scorer; ``ARR_COC_TEST_DEVICE`` / ``ARR_COC_TEST_DTYPE`` move it
(``benchmarks/gpu_check.sh`` runs the equivalence tests on CUDA in fp32 and bf16). Both are cached, so each model is built and loaded once.
No test reaches the network: ``HF_HUB_OFFLINE`` is set before transformers loads.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

SERVER_MODULES = {
    "test_auth",
    "test_lifecycle",
    "test_bento",
    "test_openai_api",
    "test_serve_tracking",
    "test_service",
    "test_soak",
    "test_vlm_testbed",
    "test_web_page",
}
SLOW_MODULES = {
    "test_testbed_training",
    "test_train_scorer_job",
    "test_eval_compare_jobs",
    "test_vlm_equivalence",
    "test_embedded_model",
    "test_feature_cache",
    "test_gpu_check",
    "test_auto_rules",
    "test_distill_job",
}


def pytest_collection_modifyitems(items) -> None:
    """Mark whole modules ``server`` or ``slow``: ``make test-fast`` deselects both."""
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if module in SERVER_MODULES:
            item.add_marker(pytest.mark.server)
        if module in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def testbed_root(tmp_path_factory):
    """Session directory that holds one testbed checkpoint per family."""
    return tmp_path_factory.mktemp("testbed")


@pytest.fixture(scope="session")
def testbed_dir(testbed_root):
    """``testbed_dir(family) -> Path`` of that family's testbed checkpoint (built on first use)."""
    from arr_coc.vlm.testbed import ensure_testbed

    def get(family: str = "qwen2.5-vl"):
        return ensure_testbed(family, testbed_root)

    return get


@pytest.fixture(scope="session")
def testbed_pipeline(testbed_dir):
    """``testbed_pipeline(family) -> VLMPipeline`` on CPU in fp32 (loaded once per family)."""
    from arr_coc.vlm.pipeline import VLMPipeline

    loaded = {}

    def get(family: str = "qwen2.5-vl"):
        if family not in loaded:
            loaded[family] = VLMPipeline.from_pretrained(
                testbed_dir(family),
                device=os.environ.get("ARR_COC_TEST_DEVICE", "cpu"),
                dtype=os.environ.get("ARR_COC_TEST_DTYPE", "float32"),
                decode="eager",
            )
        return loaded[family]

    return get
