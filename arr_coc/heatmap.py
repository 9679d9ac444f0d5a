"""Relevance maps as pictures: a colour heatmap blended over the image.

``overlay(image, relevance [H', W'], kept=[K] indices)`` colours each token cell by its
score stretched to the map's own min..max, dims the dropped tokens, outlines the kept
region and, unless ``legend=False``, adds a colour-bar strip below the image that names
the score range and the kept count. ``heatmap_png`` is the same picture as base64 PNG.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

# Anchor colours of a perceptually ordered dark-to-bright map (black, purple, orange, yellow).
_ANCHORS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)

OUTLINE = (0, 255, 255)  # cyan: absent from the palette, visible on its dark and bright ends
_PAPER = (255, 255, 255)
_INK = (20, 20, 20)
_FRAME = (128, 128, 128)
_MARGIN = 6  # px between the strip's edge, labels and the colour bar
_SINGLE_ROW_MIN_WIDTH = 280  # px; narrower strips put the kept count on a second row


def colorize(values: np.ndarray) -> np.ndarray:
    """``[H, W]`` floats in [0, 1] -> ``[H, W, 3]`` uint8 colours."""
    position = np.clip(np.nan_to_num(values), 0.0, 1.0) * (len(_ANCHORS) - 1)
    low = np.floor(position).astype(int).clip(0, len(_ANCHORS) - 2)
    frac = (position - low)[..., None]
    colours = _ANCHORS[low] * (1 - frac) + _ANCHORS[low + 1] * frac
    return colours.round().astype(np.uint8)


def stretch(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``[H', W']`` scores -> (``[H', W']`` palette positions in [0, 1], low, high).

    low..high is the range of the finite scores and maps to the whole palette; NaN and
    -inf cells sit at its bottom, +inf at its top. A constant map (low == high) keeps
    its absolute score, clipped to [0, 1], as its single position; a map with no finite
    score gives position 0 and low = high = NaN.
    """
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape), float("nan"), float("nan")
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.full(values.shape, float(np.clip(low, 0.0, 1.0))), low, high
    with np.errstate(invalid="ignore", over="ignore"):
        positions = np.nan_to_num((values - low) / (high - low), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(positions, 0.0, 1.0), low, high


def range_labels(low: float, high: float) -> tuple[str, str]:
    """The legend's end labels: 2 decimals, more (up to 6) while distinct scores print alike."""
    decimals = 2
    while decimals < 6 and low != high and f"{low:.{decimals}f}" == f"{high:.{decimals}f}":
        decimals += 1
    return f"{low:.{decimals}f}", f"{high:.{decimals}f}"


def kept_label(kept: int, total: int) -> str:
    """E.g. ``"kept 102/1024 tokens"``."""
    return f"kept {kept}/{total} tokens"


def kept_mask(grid: tuple[int, int], kept: torch.Tensor | Sequence[int]) -> np.ndarray:
    """``[H', W']`` bool mask of the kept tokens (row-major indices into the grid)."""
    mask = np.zeros(grid[0] * grid[1], dtype=bool)
    mask[torch.as_tensor(kept, dtype=torch.long).cpu().numpy()] = True
    return mask.reshape(grid)


def cells_to_pixels(cells: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[H', W']`` bool token mask -> ``[H, W]`` bool pixel mask for an image of ``size`` (W, H)."""
    picture = Image.fromarray(cells.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)
    return np.asarray(picture) > 127


def boundary(mask: np.ndarray) -> np.ndarray:
    """``[H, W]`` bool -> ``[H, W]`` bool: pixels with a 4-neighbour of the other value.

    Between a kept and a dropped cell this marks the last pixel of each, a 2 px line
    centred on the cell edge; the image border is not a boundary.
    """
    edge = np.zeros_like(mask, dtype=bool)
    across = mask[:, 1:] != mask[:, :-1]
    edge[:, 1:] |= across
    edge[:, :-1] |= across
    down = mask[1:, :] != mask[:-1, :]
    edge[1:, :] |= down
    edge[:-1, :] |= down
    return edge


def font_px(width: int) -> int:
    """Legend font size in px for an image ``width`` px wide: width / 32, within 12..18."""
    return int(np.clip(width // 32, 12, 18))


def legend_height(width: int) -> int:
    """Height in px of the legend strip under an image ``width`` px wide.

    One row (colour bar and kept count) from 280 px wide: 28 px up to 511 px wide, then
    font_px + 14 (30 px at 512-575, 32 px from 576). Narrower: two rows, 44 px.
    """
    size = font_px(width)
    if width >= _SINGLE_ROW_MIN_WIDTH:
        return max(28, size + 14)
    return 2 * (size + 6) + 8


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont) -> tuple[int, int, int]:
    """(width, height, top offset) in px of ``text``'s ink box."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top, top


def _bar(width: int, height: int, constant: float | None) -> Image.Image:
    """The ``width`` x ``height`` px colour bar: the whole palette left to right, or one
    colour at palette position ``constant``."""
    positions = np.full(width, constant) if constant is not None else np.linspace(0.0, 1.0, width)
    row = colorize(positions[None, :])
    return Image.fromarray(np.repeat(row, height, axis=0))


def legend_strip(
    width: int, low: float, high: float, kept_text: str | None = None, constant: float | None = None
) -> Image.Image:
    """The ``width`` x ``legend_height(width)`` px strip: ``low [colour bar] high`` and
    ``kept_text`` (right-aligned on the same row, or on a second row when narrow).

    ``constant`` (a palette position in [0, 1]) draws the bar in that one colour, for a
    constant map.
    """
    strip = Image.new("RGB", (width, legend_height(width)), _PAPER)
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default(size=font_px(width))
    line = font_px(width) + 6
    single_row = width >= _SINGLE_ROW_MIN_WIDTH
    row_top = (strip.height - line) // 2 if single_row else 4

    def write(text: str, x: int, top: int) -> int:
        text_w, text_h, offset = _text_size(draw, text, font)
        draw.text((x, top + (line - text_h) // 2 - offset), text, fill=_INK, font=font)
        return text_w

    right_edge = width - _MARGIN
    if kept_text:
        kept_w = _text_size(draw, kept_text, font)[0]
        if single_row:
            write(kept_text, right_edge - kept_w, row_top)
            right_edge -= kept_w + 2 * _MARGIN
        else:
            write(kept_text, _MARGIN, row_top + line + 4)
    low_text, high_text = range_labels(low, high)
    bar_left = _MARGIN + write(low_text, _MARGIN, row_top) + _MARGIN
    high_w = _text_size(draw, high_text, font)[0]
    bar_right = max(bar_left + 8, right_edge - high_w - _MARGIN)
    write(high_text, bar_right + _MARGIN, row_top)
    bar_top, bar_height = row_top + 3, line - 6
    strip.paste(_bar(bar_right - bar_left, bar_height, constant), (bar_left, bar_top))
    draw.rectangle((bar_left - 1, bar_top - 1, bar_right, bar_top + bar_height), outline=_FRAME)
    return strip


def overlay(
    image: Image.Image,
    relevance: torch.Tensor,
    kept: torch.Tensor | Sequence[int] | None = None,
    alpha: float = 0.55,
    dimming: float = 0.35,
    *,
    legend: bool = True,
    outline: tuple[int, int, int] | None = OUTLINE,
) -> Image.Image:
    """Blend the colourized ``[H', W']`` relevance over ``image`` (W x H px), RGB.

    Colours span the map's own min..max (see ``stretch``). With ``kept`` (``[K]``
    row-major token indices) dropped tokens are dimmed to ``dimming`` of their
    brightness and the kept/dropped edges drawn 2 px wide in ``outline`` (None: none).
    ``legend=True`` returns W x (H + ``legend_height(W)``) px, ``legend_strip`` below the
    image (e.g. 320x240 -> 320x268, 640x480 -> 640x512, 224x168 -> 224x212);
    ``legend=False`` returns W x H px.
    """
    values = torch.as_tensor(relevance).detach().float().cpu().numpy()
    positions, low, high = stretch(values)
    cells = Image.fromarray(colorize(positions)).resize(image.size, Image.Resampling.NEAREST)
    picture = Image.blend(image.convert("RGB"), cells, alpha)
    kept_text = None
    if kept is not None:
        token_mask = kept_mask(values.shape, kept)
        picture = _mark_kept(picture, cells_to_pixels(token_mask, image.size), dimming, outline)
        kept_text = kept_label(int(token_mask.sum()), token_mask.size)
    if not legend:
        return picture
    constant = float(positions.flat[0]) if positions.size and not high > low else None
    return _stack(picture, legend_strip(image.width, low, high, kept_text, constant))


def heatmap_png(
    image: Image.Image, relevance: torch.Tensor, kept: torch.Tensor | Sequence[int] | None, *, legend: bool = True
) -> str:
    """Base64 PNG of ``overlay(image, relevance [H', W'], kept)``: W x (H + ``legend_height(W)``)
    px with the legend, W x H px without."""
    buffer = io.BytesIO()
    overlay(image, relevance, kept, legend=legend).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _mark_kept(
    picture: Image.Image, mask: np.ndarray, dimming: float, outline: tuple[int, int, int] | None
) -> Image.Image:
    """Dim ``picture`` outside the ``[H, W]`` kept ``mask``; draw its boundary in ``outline``."""
    shade = np.where(mask, 1.0, dimming)[..., None]
    pixels = (np.asarray(picture, dtype=np.float64) * shade).round().astype(np.uint8)
    if outline is not None:
        pixels[boundary(mask)] = outline
    return Image.fromarray(pixels)


def _stack(top: Image.Image, bottom: Image.Image) -> Image.Image:
    """``top`` above ``bottom``, both of the same width."""
    canvas = Image.new("RGB", (top.width, top.height + bottom.height), _PAPER)
    canvas.paste(top, (0, 0))
    canvas.paste(bottom, (0, top.height))
    return canvas
