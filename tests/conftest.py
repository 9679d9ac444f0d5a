"""Shared fixtures: the offline testbed models, built once per test session.

``testbed_dir(family)`` returns a checkpoint directory of the tiny ``family``
model (``qwen2-vl``, ``qwen2.5-vl``, ``qwen3-vl``) built into a session temp dir;
``testbed_pipeline(family)`` a loaded :class:`VLMPipeline` on CPU (fp32) with the
untrained seeded scorer; ``ARR_COC_TEST_DEVICE`` / ``ARR_COC_TEST_DTYPE`` move it
(``benchmarks/gpu_check.sh`` runs the equivalence tests on CUDA in fp32 and bf16). Both are cached, so each model is built and loaded once.
No test reaches the network: ``HF_HUB_OFFLINE`` is set before transformers loads.

Markers: a module that starts the real server declares ``pytestmark = pytest.mark.server``,
one that trains ``pytest.mark.slow`` (``make test-fast`` deselects both). Each test's
markers are recorded before its fixtures run; :class:`testkit.serving.Server` and every
training run (the ``arr_coc.training.start`` auditing event, and ``wandb_jobs.arr_coc``
for training commands) fail a test that lacks its marker (:mod:`testkit.markers`).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import sys  # noqa: E402

import pytest  # noqa: E402

from arr_coc.training.audit import TRAINING_STARTS  # noqa: E402
from testkit import markers  # noqa: E402


def _check_training_is_marked_slow(event: str, args: tuple) -> None:
    if event == TRAINING_STARTS:
        markers.require("slow", f"trains ({args[0]})")


sys.addaudithook(_check_training_is_marked_slow)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    """Record the test's markers before its fixtures run: testkit.markers checks them."""
    markers.record_running(item.nodeid, {marker.name for marker in item.iter_markers()})


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item) -> None:
    markers.clear_running()


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
