"""The rows a training step feeds the LLM: vision with gradients, token dropping, pruned prefill with the answer.

Kept tokens go through the serving path's pruned prefill (:func:`arr_coc.vlm.pruning.prune_row`)
at their original 3-row M-RoPE positions, dropped after the vision tower (``post``) or before
it (``pre``: the tower runs on the kept patches only, :func:`arr_coc.vlm.pre_encoder.encode_kept`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from arr_coc.training.testbed.data import TrainingExample
from arr_coc.training.testbed.subsets import random_subset, target_subset
from arr_coc.vlm.loading import LoadedVLM
from arr_coc.vlm.pre_encoder import encode_kept
from arr_coc.vlm.pruning import encode_images, full_positions, prune_row


def answer_rows(
    vlm: LoadedVLM,
    examples: Sequence[TrainingExample],
    keep_ratios: Sequence[float],
    generator: torch.Generator,
    pre: Sequence[bool] | None = None,
    focused: Sequence[bool] | None = None,
    target_extra: float = 0.1,
    distractors: bool = False,
):
    """Vision (with gradients) for all images, token dropping, pruned rows with their answers.

    Returns ``(rows, kept, features)``: per example an ``LLMRow`` of prompt + answer
    whose kept visual tokens (``kept [K_b]``, raster indices) are a random
    ``keep_ratio`` share at stock positions (or, where ``focused[b]``, a
    :func:`target_subset`), and the merger outputs: of every token ``[N_b, D]``, or
    of the kept tokens only ``[K_b, D]`` for the examples dropped before the tower
    (``pre[b]``).
    """
    pre = [False] * len(examples) if pre is None else list(pre)
    focused = [False] * len(examples) if focused is None else list(focused)
    kept_sets = []
    for example, ratio, focus in zip(examples, keep_ratios, focused):
        tokens = int(example.encoded.image_grid_thw.prod()) // vlm.merge_size**2
        if focus:
            owners = example.owners if distractors else None
            kept_sets.append(target_subset(example.target, target_extra, generator, owners))
        else:
            kept_sets.append(random_subset(tokens, ratio, generator))
    pixels = [e.encoded.pixel_values for e in examples]
    grids = [e.encoded.image_grid_thw for e in examples]
    if any(pre):
        vision = encode_kept(vlm, pixels, grids, [k if p else None for k, p in zip(kept_sets, pre)])
    else:
        vision = encode_images(vlm, pixels, grids)
    rows = []
    for example, image, kept, before in zip(examples, vision, kept_sets, pre):
        e = example.encoded
        ids = torch.cat([e.input_ids, example.answer_ids])
        types = torch.cat([e.mm_token_type_ids, torch.zeros_like(example.answer_ids)])
        positions = full_positions(vlm, ids, types, e.image_grid_thw)
        rows.append(prune_row(ids, positions, types, image, kept, vision_is_kept=before))
    return rows, kept_sets, [image.features for image in vision]
