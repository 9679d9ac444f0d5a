"""The relevance overlay: stretched palette, kept-region outline and legend strip."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from arr_coc.heatmap import (
    _ANCHORS,
    OUTLINE,
    boundary,
    heatmap_png,
    kept_label,
    legend_height,
    overlay,
    range_labels,
    stretch,
)

BOTTOM, TOP = tuple(_ANCHORS[0].astype(int)), tuple(_ANCHORS[-1].astype(int))


def colours(picture: Image.Image | np.ndarray) -> set[tuple[int, ...]]:
    """The distinct RGB triples of a picture."""
    pixels = np.asarray(picture).reshape(-1, 3)
    return {tuple(int(v) for v in row) for row in np.unique(pixels, axis=0)}


def ramp(low: float = 0.2, high: float = 0.7) -> torch.Tensor:
    """``[4, 4]`` scores from ``low`` to ``high`` in row-major order."""
    return torch.linspace(low, high, 16).reshape(4, 4)


def gray(width: int = 64, height: int = 64) -> Image.Image:
    return Image.new("RGB", (width, height), (128, 128, 128))


def test_a_narrow_score_range_spans_the_whole_palette():
    picture = overlay(gray(), ramp(), alpha=1.0, legend=False)
    found = colours(picture)
    assert BOTTOM in found and TOP in found
    positions, low, high = stretch(ramp().numpy())
    assert (positions.min(), positions.max()) == (0.0, 1.0)
    assert (low, high) == pytest.approx((0.2, 0.7))


def test_a_constant_map_gets_one_colour_and_a_legend():
    picture = overlay(gray(), torch.full((4, 4), 0.5), alpha=1.0, legend=False)
    assert len(colours(picture)) == 1
    with_legend = overlay(gray(320, 240), torch.full((4, 4), 0.5))
    assert with_legend.size == (320, 240 + legend_height(320))
    assert range_labels(0.5, 0.5) == ("0.50", "0.50")


def test_nan_and_inf_scores_are_drawn_at_the_palette_ends():
    values = ramp().numpy().copy()
    values[0, 0], values[0, 1], values[0, 2] = np.nan, np.inf, -np.inf
    positions, low, high = stretch(values)
    assert positions[0, :3].tolist() == [0.0, 1.0, 0.0]
    assert np.isfinite([low, high]).all()
    assert stretch(np.full((2, 2), np.nan))[0].tolist() == [[0.0, 0.0], [0.0, 0.0]]
    overlay(gray(320, 240), torch.full((2, 2), float("nan")), torch.tensor([0]))


def test_the_kept_region_is_outlined_on_its_boundary_only():
    kept = torch.tensor([0, 1, 4, 5])  # the top-left 2x2 tokens: pixels [0, 32) x [0, 32)
    pixels = np.asarray(overlay(gray(), ramp(), kept, alpha=1.0, legend=False))
    cyan = np.all(pixels == OUTLINE, axis=-1)
    assert cyan[10, 31] and cyan[10, 32] and cyan[31, 10] and cyan[32, 10]
    assert not cyan[16, 16] and not cyan[10, 29] and not cyan[50, 50]
    assert not cyan[0, 10] and not cyan[10, 0]  # the image border is no kept/dropped edge
    plain = np.asarray(overlay(gray(), ramp(), kept, alpha=1.0, legend=False, outline=None))
    assert not np.all(plain == OUTLINE, axis=-1).any()


def test_boundary_marks_both_sides_of_a_cell_edge():
    mask = np.zeros((4, 6), dtype=bool)
    mask[:, :3] = True
    assert boundary(mask)[0].tolist() == [False, False, True, True, False, False]
    assert not boundary(np.ones((4, 6), dtype=bool)).any()


def test_the_legend_strip_shows_the_whole_palette():
    image = gray(320, 240)
    picture = overlay(image, ramp(), torch.tensor([0, 1, 4, 5]))
    assert picture.size == (320, 240 + legend_height(320)) and legend_height(320) >= 28
    strip = np.asarray(picture)[240:]
    found = colours(strip)
    assert BOTTOM in found and TOP in found


def test_legend_false_keeps_the_input_size():
    for size in [(64, 64), (320, 240), (37, 23)]:
        assert overlay(gray(*size), ramp(), torch.tensor([3]), legend=False).size == size


@pytest.mark.parametrize("width", [224, 320, 448, 640])
def test_every_testbed_width_gets_a_legible_strip(width):
    picture = overlay(gray(width, width * 3 // 4), ramp(), torch.tensor([0]))
    assert picture.height - width * 3 // 4 == legend_height(width) >= 28


def test_the_legend_labels_name_the_range():
    assert range_labels(0.2134, 0.6789) == ("0.21", "0.68")
    assert range_labels(0.501, 0.504) == ("0.501", "0.504")
    assert kept_label(102, 1024) == "kept 102/1024 tokens"


def test_the_legend_text_follows_the_range_and_kept_count():
    narrow, wide = (np.asarray(overlay(gray(320, 240), ramp(*span))) for span in [(0.2, 0.7), (0.3, 0.9)])
    assert np.array_equal(narrow[:240], wide[:240])  # stretched: the same colours over the image
    assert not np.array_equal(narrow[240:], wide[240:])  # but other numbers in the legend
    assert np.array_equal(narrow, np.asarray(overlay(gray(320, 240), ramp(0.2, 0.7))))
    one, two = (np.asarray(overlay(gray(320, 240), ramp(), torch.tensor(kept)))[240:] for kept in [[0], [0, 1]])
    assert not np.array_equal(one, two)


def test_heatmap_png_is_the_overlay_as_base64_png():
    kept = [0, 1, 4, 5]
    decoded = Image.open(io.BytesIO(base64.b64decode(heatmap_png(gray(320, 240), ramp(), kept))))
    assert np.array_equal(np.asarray(decoded), np.asarray(overlay(gray(320, 240), ramp(), torch.tensor(kept))))
