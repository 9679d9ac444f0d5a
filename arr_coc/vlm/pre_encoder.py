"""The vision tower on the kept tokens only: pruning before the encoder (``stage = "pre"``).

The Qwen-VL processors lay an image's ``P = t * h * w`` patches out block-major:
merged token ``j`` (raster index on the ``H' x W'`` grid) owns patches
``j * m^2 .. (j + 1) * m^2 - 1``, ``m`` the spatial merge size. Keeping tokens
``kept [K]`` keeps those ``K * m^2`` patches. Everything the tower derives from
the image grid is computed for the FULL grid with transformers' own helpers
(``transformers.vision_utils``) and then restricted to the kept patches, and
handed to the tower through the keyword arguments its forward pops:

- ``position_ids [K m^2, 2]``: each patch's original (row, column) for the 2D rotary;
- ``cu_seqlens``: one attention segment per image, of its kept patches;
- Qwen2.5-VL ``window_index`` / ``cu_window_seqlens``: the original windows, each
  holding only its kept tokens (empty windows vanish);
- Qwen3-VL ``interp_indices`` / ``interp_weights``: the learned position embedding
  interpolated for the original grid, at the kept patches.

The merger then gives ``[K, D]`` features per image (and Qwen3-VL's DeepStack
features for the same tokens). With every token kept this is the stock tower.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.vision_utils import (
    get_vision_interpolation_indices_and_weights,
    get_vision_position_ids,
    get_vision_window_index,
)

from arr_coc.vlm.loading import LoadedVLM
from arr_coc.vlm.pruning import VisionFeatures


def kept_patches(kept: torch.Tensor, merge_unit: int) -> torch.Tensor:
    """Patch indices ``[K * m^2]`` of the merged tokens ``kept [K]`` (ascending when ``kept`` is)."""
    return (kept[:, None] * merge_unit + torch.arange(merge_unit, device=kept.device)).flatten()


def _kept_windows(thw: torch.Tensor, kept: torch.Tensor, visual) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2.5-VL windows of one image restricted to ``kept [K]``.

    Returns ``window_index [K]`` (local kept indices in window order) and the window
    lengths ``[W']`` in patches of the non-empty windows.
    """
    merge = visual.spatial_merge_size
    full_index, full_cu = get_vision_window_index(thw[None], merge, visual.window_size, visual.patch_size)
    tokens = int(full_index.numel())
    window_of = torch.empty(tokens, dtype=torch.long)
    bounds = (full_cu.cpu() // (merge * merge)).tolist()  # window boundaries in window-order token positions
    for window, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        window_of[full_index.cpu()[start:end]] = window
    order = torch.empty(tokens, dtype=torch.long)
    order[full_index.cpu()] = torch.arange(tokens)  # each token's place in window order
    kept_cpu = kept.cpu()
    in_window_order = kept_cpu[torch.argsort(order[kept_cpu])]
    local_index = torch.searchsorted(kept_cpu, in_window_order)
    counts = torch.bincount(window_of[kept_cpu], minlength=len(bounds) - 1)
    return local_index, counts[counts > 0] * merge * merge


def encode_kept(
    vlm: LoadedVLM,
    pixel_values: list[torch.Tensor],
    grids_thw: list[torch.Tensor],
    kept: list[torch.Tensor | None],
) -> list[VisionFeatures]:
    """One tower pass over the kept patches of every image; ``None`` keeps all of an image.

    pixel_values: per image ``[P_b, C * T * p * p]``; grids_thw: per image ``[3]``;
    kept: per image ``[K_b]`` ascending raster indices of merged tokens, or ``None``.
    Returns per image ``[K_b, D]`` merger features (``K_b = N_b`` for ``None``),
    with DeepStack features for Qwen3-VL.
    """
    visual = vlm.model.model.visual
    merge = visual.spatial_merge_size
    unit = merge * merge
    family = vlm.family.name
    pixels, positions, seqlens, interp_indices, interp_weights = [], [], [], [], []
    window_index, window_lengths, counts = [], [], []
    offset = 0
    for values, thw, keep in zip(pixel_values, grids_thw, kept):
        thw = thw.reshape(3).to(torch.long)
        tokens = int(thw.prod()) // unit
        keep = torch.arange(tokens) if keep is None else keep.to(torch.long).cpu()
        patches = kept_patches(keep, unit)
        pixels.append(values[patches])
        positions.append(get_vision_position_ids(thw[None], merge)[patches])
        seqlens.append(patches.numel())
        counts.append(int(keep.numel()))
        if family == "qwen3-vl":
            indices, weights = get_vision_interpolation_indices_and_weights(
                thw[None],
                num_grid_per_side=visual.num_grid_per_side,
                mode=visual.interpolation_mode,
                align_corners=visual.interpolation_align_corners,
                spatial_merge_size=merge,
            )
            interp_indices.append(indices[patches])
            interp_weights.append(weights[patches])
        if family == "qwen2.5-vl":
            local, lengths = _kept_windows(thw, keep, visual)
            window_index.append(local + offset)
            window_lengths.append(lengths)
        offset += int(keep.numel())

    device = vlm.device
    cumulative = lambda lengths: F.pad(torch.as_tensor(lengths).cumsum(0), (1, 0)).to(device, torch.int32)  # noqa: E731
    precomputed = {"position_ids": torch.cat(positions).to(device), "cu_seqlens": cumulative(seqlens)}
    if family == "qwen2.5-vl":
        precomputed["window_index"] = torch.cat(window_index).to(device)
        precomputed["cu_window_seqlens"] = cumulative(torch.cat(window_lengths))
    if family == "qwen3-vl":
        precomputed["interp_indices"] = torch.cat(interp_indices).to(device)
        precomputed["interp_weights"] = torch.cat(interp_weights).to(device)
    grid = torch.stack([g.reshape(3) for g in grids_thw]).to(device)
    out = visual(torch.cat(pixels).to(device, visual.dtype), grid_thw=grid, return_dict=True, **precomputed)
    features = torch.split(out.pooler_output, counts)
    deepstack = getattr(out, "deepstack_features", None) if vlm.family.deepstack else None
    layers = None if deepstack is None else [torch.split(layer, counts) for layer in deepstack]
    return [
        VisionFeatures(feats, None if layers is None else [layer[i] for layer in layers])
        for i, feats in enumerate(features)
    ]
