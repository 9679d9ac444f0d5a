"""The BentoML model store: where bentos get their models.

``import_models`` copies a VLM checkpoint (directory, hub id, or the embedded
testbed) and optionally a scorer checkpoint into the store as ``arr-coc-vlm`` and
``arr-coc-scorer``; ``bentoml build`` then bundles them (``bentofile.yaml``
``models:``) and the container loads them with ``ARR_COC_MODEL=model-store:...``,
with no hub access at start.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import bentoml

from arr_coc.errors import CheckpointFormatError, ModelNotFoundError
from arr_coc.provenance import check_scorer_fits, vlm_name
from arr_coc.scorer import RelevanceScorer
from arr_coc.vlm.loading import read_family, resolve_source
from model_store.sources import SCORER_MODEL_NAME, VLM_MODEL_NAME

CHECKPOINT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model", "*.tiktoken"]


def local_checkpoint(source: str) -> Path:
    """A checkpoint directory for ``source``: itself, or a hub snapshot (safetensors and configs only)."""
    resolved = resolve_source(source)
    if Path(resolved).is_dir():
        return Path(resolved)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(resolved, allow_patterns=CHECKPOINT_PATTERNS))
    except Exception as error:  # offline, unknown repo, auth: all mean "not available here"
        raise ModelNotFoundError(f"cannot download {resolved}: {error}", field="vlm") from error


def _copy_into_store(name: str, source: Path, metadata: dict) -> bentoml.Model:
    with bentoml.models.create(name, metadata=metadata, labels={"project": "arr-coc"}) as model:
        shutil.copytree(source, model.path, dirs_exist_ok=True)
    return model


def import_models(vlm: str, scorer: str | None = None) -> list[str]:
    """Store the VLM (and scorer); returns the new tags.

    Both are checked before anything is stored, so a refused scorer (unreadable, of
    another width, or recording another VLM: :class:`~arr_coc.errors.ScorerMismatchError`)
    never leaves a new ``arr-coc-vlm:latest`` behind.
    """
    family = read_family(vlm)
    checkpoint = local_checkpoint(vlm)
    if scorer:
        loaded = RelevanceScorer.load(scorer)  # refuse a broken checkpoint before storing anything
        width = read_hidden_size(checkpoint)
        if loaded.query_dim != width:
            raise CheckpointFormatError(
                f"the scorer at {scorer} takes {loaded.query_dim}-d queries but the VLM's embeddings are {width}-d",
                field="scorer",
            )
        check_scorer_fits(loaded, checkpoint, vlm=vlm_name(vlm))
    tags = [str(_copy_into_store(VLM_MODEL_NAME, checkpoint, {"source": str(vlm), "family": family.name}).tag)]
    if scorer:
        tags.append(str(_copy_into_store(SCORER_MODEL_NAME, Path(scorer), {"source": str(scorer)}).tag))
    return tags


def read_hidden_size(checkpoint: Path) -> int:
    """Width of the LLM's input embeddings, from the checkpoint's ``config.json``."""
    config = json.loads((checkpoint / "config.json").read_text())
    return int(config.get("text_config", config)["hidden_size"])
