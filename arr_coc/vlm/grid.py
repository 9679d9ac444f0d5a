"""The token grid bridge: the VLM's visual-token grid and the image it sees.

The processor resizes an image to ``(h * p, w * p)`` pixels (``p`` the patch
size, ``h, w`` from ``image_grid_thw``) and the merger joins ``m x m`` patches
(``m`` the merge size) into one visual token, so the LLM sees a grid
``(H', W') = (h / m, w / m)`` with token ``i * W' + j`` covering the pixel block
``[i*m*p, (i+1)*m*p) x [j*m*p, (j+1)*m*p)`` of the resized image.
:func:`resized_image` rebuilds that resized image from ``pixel_values`` (undoing
the patch layout and the normalization), so ``texture_array(image, grid)`` cells
line up one-to-one with the visual tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from arr_coc.vlm.inputs import prepare_image


@dataclass(frozen=True)
class TokenGrid:
    """One image as the VLM sees it.

    grid: ``(H', W')`` merged visual tokens, ``N = H' * W'``.
    image: ``[3, H' * m * p, W' * m * p]`` float in [0, 1], the processor's resized image.
    image_grid_thw: ``(t, h, w)`` in patches.
    """

    grid: tuple[int, int]
    image: torch.Tensor
    image_grid_thw: tuple[int, int, int]

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]


def merged_grid(image_grid_thw, merge_size: int) -> tuple[int, int]:
    """``(H', W') = (h / m, w / m)`` from ``(t, h, w)`` patches."""
    _, h, w = (int(v) for v in image_grid_thw)
    return h // merge_size, w // merge_size


def resized_image(pixel_values: torch.Tensor, image_grid_thw, image_processor) -> torch.Tensor:
    """``[3, h * p, w * p]`` float in [0, 1]: the image the processor patchified.

    ``pixel_values`` is ``[t * h * w, 3 * T * p * p]`` in the Qwen-VL patch order
    (merge blocks of ``m x m`` patches in raster order; each patch repeated over
    the ``T`` temporal slots); the first temporal slot of frame 0 is kept.
    """
    ip = image_processor
    _, h, w = (int(v) for v in image_grid_thw)
    p, m, t = int(ip.patch_size), int(ip.merge_size), int(ip.temporal_patch_size)
    patches = pixel_values[: h * w].float().reshape(h // m, w // m, m, m, 3, t, p, p)[:, :, :, :, :, 0]
    # [h/m, w/m, m, m, 3, p, p] -> [3, h/m, m, p, w/m, m, p]
    image = patches.permute(4, 0, 2, 5, 1, 3, 6).reshape(3, h * p, w * p)
    if ip.do_normalize:
        mean = torch.as_tensor(ip.image_mean, dtype=image.dtype).view(3, 1, 1)
        std = torch.as_tensor(ip.image_std, dtype=image.dtype).view(3, 1, 1)
        image = image * std + mean
    if not ip.do_rescale:
        image = image / 255.0
    return image.clamp(0.0, 1.0)


def token_grid(processor, image: Image.Image) -> TokenGrid:
    """The bridge for one PIL image: run the image processor alone and read back grid and image.

    ``processor`` is the VLM's processor (e.g. ``LoadedVLM.processor``); the
    image goes through the same preparation as in answering, so the grid is the
    one the LLM will see for this image.
    """
    image_processor = processor.image_processor
    image = prepare_image(image_processor, image)
    batch = image_processor(images=[image], return_tensors="pt")
    thw = tuple(int(v) for v in batch["image_grid_thw"][0])
    return TokenGrid(
        grid=merged_grid(thw, int(image_processor.merge_size)),
        image=resized_image(batch["pixel_values"], thw, image_processor),
        image_grid_thw=thw,
    )


def resized_token_grid(image_processor, image: Image.Image) -> TokenGrid:
    """The bridge for one PIL image from the processor's resize alone: no rescale, normalization or patches.

    The resized image is the processor's own (its ``resize``, on the same uint8
    pixels), so it equals :func:`token_grid`'s ``image`` within float rounding
    (about 6e-8) at a fraction of the cost; for a scorer that needs no ``pixel_values``.
    """
    image = prepare_image(image_processor, image)
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]  # [1, 3, H, W] uint8
    patch, merge = int(image_processor.patch_size), int(image_processor.merge_size)
    resized = image_processor.resize(
        pixels, size=image_processor.size, resample=image_processor.resample, factor=patch * merge
    )[0]
    height, width = resized.shape[-2:]
    thw = (1, height // patch, width // patch)
    return TokenGrid(grid=merged_grid(thw, merge), image=resized.float() / 255.0, image_grid_thw=thw)
