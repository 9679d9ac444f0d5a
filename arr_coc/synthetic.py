"""Datasets of (image, question, answer, target mask), and the built-in synthetic one.

A dataset is anything with ``len(ds)`` and ``ds[i] -> Sample`` (:class:`Dataset`).
The target mask marks the visual tokens that hold the object the question is
about, on the VLM's token grid of that image: ``grid_for(width, height) -> (H', W')``
tells the dataset which grid the VLM will use (:func:`patch_grid` for a fixed
token size, or the processor's own rule, see ``arr_coc.training.data``).

:class:`SyntheticShapes` draws every sample from a seed, so nothing is stored:
2-4 coloured shapes (each with its own colour and shape, one per image quadrant)
on a noisy grey background, and one question that names an object by its colour,
its position or its shape:

- ``"what shape is the red object?"`` -> ``"circle"``
- ``"what colour is the object in the top left?"`` -> ``"blue"``
- ``"what colour is the triangle?"`` -> ``"yellow"``

Splits draw from disjoint seed streams, so ``train`` and ``heldout`` never share
a scene.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from arr_coc.errors import EmptyDatasetError, UnknownDatasetError

GridFn = Callable[[int, int], tuple[int, int]]
"""``grid_for(width, height) -> (H', W')``: the VLM's token grid of an image of that pixel size."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 70),
    "blue": (50, 90, 235),
    "yellow": (240, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
POSITIONS = {"top left": (0, 0), "top right": (0, 1), "bottom left": (1, 0), "bottom right": (1, 1)}
QUESTION_KINDS = ("colour", "position", "shape")
SPLITS = {"train": 0, "heldout": 1}
COVERAGE_THRESHOLD = 0.25  # a token is part of the object when the object covers this share of its pixels


@dataclass
class Sample:
    """One question about one image.

    image: RGB PIL image.
    target_mask: ``[H', W']`` bool on the VLM's token grid of ``image``; True where
        the object the question is about covers at least ``COVERAGE_THRESHOLD`` of a token.
    kind: what the question names the object by (``colour``, ``position``, ``shape``).
    """

    image: Image.Image
    question: str
    answer: str
    target_mask: torch.Tensor
    kind: str = ""

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.target_mask.shape)


@runtime_checkable
class Dataset(Protocol):
    """What training and evaluation read: random access to :class:`Sample` s."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


def patch_grid(token_pixels: int = 28) -> GridFn:
    """Grid of one token per ``token_pixels x token_pixels`` pixels (Qwen2/2.5-VL: 14 px patches, 2x2 merge)."""

    def grid_for(width: int, height: int) -> tuple[int, int]:
        return max(1, round(height / token_pixels)), max(1, round(width / token_pixels))

    return grid_for


def token_mask(pixel_mask: np.ndarray, grid: tuple[int, int], threshold: float = COVERAGE_THRESHOLD) -> torch.Tensor:
    """``[H, W]`` bool pixel mask -> ``[H', W']`` bool token mask.

    A token is in the mask when the pixels it covers are at least ``threshold``
    inside the object (the processor's resize keeps area shares, so the share is
    measured on the original pixels). An object smaller than every token still
    marks the token(s) it covers most.
    """
    mask = torch.from_numpy(pixel_mask.astype(np.float32))[None, None]
    coverage = F.adaptive_avg_pool2d(mask, grid)[0, 0]
    target = coverage >= threshold
    if not target.any() and coverage.max() > 0:
        target = coverage == coverage.max()
    return target


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Outline of ``shape`` of radius ``r`` pixels around ``(cx, cy)``; ``None`` for a circle."""
    if shape == "circle":
        return None
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "cross":
        w = r * 0.38
        return [
            (cx - w, cy - r),
            (cx + w, cy - r),
            (cx + w, cy - w),
            (cx + r, cy - w),
            (cx + r, cy + w),
            (cx + w, cy + w),
            (cx + w, cy + r),
            (cx - w, cy + r),
            (cx - w, cy + w),
            (cx - r, cy + w),
            (cx - r, cy - w),
            (cx - w, cy - w),
        ]
    raise ValueError(f"unknown shape {shape!r}")


def draw_mask(shape: str, size: tuple[int, int], cx: float, cy: float, r: float) -> np.ndarray:
    """``[H, W]`` bool pixel mask of one shape on an image of ``size = (width, height)``."""
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    polygon = _shape_polygon(shape, cx, cy, r)
    if polygon is None:
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        draw.polygon(polygon, fill=255)
    return np.asarray(canvas) > 127


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    position: str
    mask: np.ndarray  # [H, W] bool


class SyntheticShapes:
    """Coloured shapes and questions about one of them, generated from ``(seed, split, index)``.

    Args:
        size: number of samples (>= 1).
        split: ``"train"`` or ``"heldout"`` (disjoint seed streams).
        seed: base seed; the same arguments give the same samples on every machine.
        image_size: side of the square images, in pixels.
        grid_for: the VLM's token grid of an image (default: 28-pixel tokens).
    """

    def __init__(
        self, size: int, split: str = "train", seed: int = 0, image_size: int = 336, grid_for: GridFn | None = None
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise EmptyDatasetError(f"a dataset needs at least one sample, got size={size!r}", field="size")
        if split not in SPLITS:
            raise UnknownDatasetError(f"unknown split {split!r}; known: {', '.join(SPLITS)}", field="split")
        if image_size < 56:
            raise EmptyDatasetError(f"image_size must be >= 56 pixels, got {image_size}", field="image_size")
        self.size = size
        self.split = split
        self.seed = seed
        self.image_size = image_size
        self.grid_for = grid_for or patch_grid()

    def __len__(self) -> int:
        return self.size

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLITS[self.split], index])

    def scene(self, index: int) -> tuple[Image.Image, list[SceneObject], np.random.Generator]:
        """The image and its objects (the generator continues into the question)."""
        rng = self._rng(index)
        side = self.image_size
        half = side / 2
        level = rng.uniform(60, 120)
        pixels = np.clip(level + rng.normal(0, 6, (side, side, 3)), 0, 255)
        count = int(rng.integers(2, 5))
        quadrants = rng.permutation(4)[:count]
        colours = rng.choice(len(COLOURS), count, replace=False)
        shapes = rng.choice(len(SHAPES), count, replace=False)
        objects = []
        for quadrant, colour_index, shape_index in zip(quadrants, colours, shapes):
            position = list(POSITIONS)[int(quadrant)]
            row, col = POSITIONS[position]
            r = rng.uniform(0.11, 0.16) * side
            cx = rng.uniform(col * half + r + 2, (col + 1) * half - r - 2)
            cy = rng.uniform(row * half + r + 2, (row + 1) * half - r - 2)
            shape, colour = SHAPES[int(shape_index)], list(COLOURS)[int(colour_index)]
            mask = draw_mask(shape, (side, side), cx, cy, r)
            pixels[mask] = np.asarray(COLOURS[colour], dtype=np.float64) + rng.normal(0, 4, (int(mask.sum()), 3))
            objects.append(SceneObject(shape, colour, position, mask))
        image = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), "RGB")
        return image, objects, rng

    def __getitem__(self, index: int) -> Sample:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not -self.size <= index < self.size:
            raise IndexError(f"sample {index!r} out of range for a dataset of {self.size}")
        image, objects, rng = self.scene(int(index) % self.size)
        target = objects[int(rng.integers(len(objects)))]
        kind = QUESTION_KINDS[int(rng.integers(len(QUESTION_KINDS)))]
        if kind == "colour":
            question, answer = f"what shape is the {target.colour} object?", target.shape
        elif kind == "position":
            question, answer = f"what colour is the object in the {target.position}?", target.colour
        else:
            question, answer = f"what colour is the {target.shape}?", target.colour
        grid = self.grid_for(image.width, image.height)
        return Sample(image, question, answer, token_mask(target.mask, grid), kind)
