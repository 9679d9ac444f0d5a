"""The model a testbed run starts from: random weights, a checkpoint to fine-tune, or that checkpoint grown."""

from __future__ import annotations

from pathlib import Path

from arr_coc.tasks.shapes_vqa import ANSWER_WORDS
from arr_coc.vlm.growth import Growth, grow_model
from arr_coc.vlm.loading import LoadedVLM, load_vlm
from arr_coc.vlm.testbed import build_testbed

TRAINING_ATTENTION = {"text_config": "eager", "vision_config": "sdpa", "": "sdpa"}
"""Eager attention in the LLM (its weights feed the attention hints), SDPA in the vision tower."""


def initial_model(
    directory: str | Path, seed: int, init: str = "", growth: Growth | None = None, device: str = "cpu"
) -> LoadedVLM:
    """The model training starts from, on ``device``: checkpoint ``init`` (grown by ``growth``, new weights
    from ``seed``, written to ``directory``), or the untrained VQA testbed (random weights from ``seed``)
    written to ``directory``."""
    growth = growth or Growth()
    if not init:
        build_testbed(directory, "qwen2.5-vl", seed=seed, size="vqa", words=ANSWER_WORDS)
    elif not growth.empty:
        start = load_vlm(init, device="cpu", dtype="float32")
        grow_model(start.model, growth, seed).save_pretrained(directory, safe_serialization=True)
        start.processor.save_pretrained(directory)
    else:
        directory = init
    return load_vlm(directory, device=device, dtype="float32", attn_implementation=TRAINING_ATTENTION)
