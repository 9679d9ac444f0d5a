"""Where the runners' models come from: settings -> a checkpoint path or hub id.

``ARR_COC_MODEL`` (and ``ARR_COC_SCORER``) may be:
- empty: the embedded testbed (``ARR_COC_TESTBED_FAMILY``): the shipped trained VQA testbed
  (``qwen2.5-vl-vqa``, with its trained scorer when ``ARR_COC_SCORER`` is empty), or a family's
  random-weight testbed, built under ``ARR_COC_HOME`` if absent;
- ``model-store:<tag>``: a model in the BentoML model store, e.g. ``model-store:arr-coc-vlm:latest``
  (what ``arr-coc models import`` writes and ``bentoml build`` bundles);
- a local checkpoint directory or a hub id.
"""

from __future__ import annotations

import bentoml

from arr_coc.settings import Settings

STORE_PREFIX = "model-store:"
VLM_MODEL_NAME = "arr-coc-vlm"
SCORER_MODEL_NAME = "arr-coc-scorer"


def resolve(reference: str) -> str:
    """A store reference -> the stored model's directory; anything else unchanged."""
    if reference.startswith(STORE_PREFIX):
        return str(bentoml.models.get(reference.removeprefix(STORE_PREFIX)).path)
    return reference


def vlm_source(settings: Settings) -> str:
    """The VLM checkpoint the runners load."""
    from arr_coc.vlm.testbed import testbed_source  # builds models: transformers, in the runner only

    if not settings.model:
        return str(testbed_source(settings.testbed_family, settings.home / "testbed"))
    return resolve(settings.model)


def scorer_source(settings: Settings) -> str | None:
    """The scorer checkpoint directory, or ``None`` for the untrained seeded scorer (``settings.scorer_trained`` is
    false: the front then serves a training-free default variant and flags the ``arr-coc`` ones)."""
    from arr_coc.vlm.testbed import EMBEDDED_SCORER

    if settings.scorer:
        return resolve(settings.scorer)
    if settings.scorer_trained:
        return str(EMBEDDED_SCORER)
    return None
