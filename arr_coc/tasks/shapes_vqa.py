"""The synthetic VQA task: coloured shapes on a gradient, three question templates.

This module implements a public spec that anyone can redraw with their own
renderer, so the model and the scorer trained on it must not depend on drawing
details. The spec:

- **Scene**: RGB, width and height each in [320, 640] px. Background: a vertical
  gradient between two muted colours (every channel in 60..190) plus Gaussian
  pixel noise with sigma <= 8 (0..255 scale). 3 to 6 filled objects with
  axis-aligned bounding boxes at least 4 px apart and inside the image, each box
  side between 6 % and 14 % of the shorter image side.
- **Shapes**: circle, square, triangle (apex up), star (5 points), cross (plus
  sign, arm width 1/3 of the box).
- **Colours** (exact RGB): :data:`COLOURS`.
- **Questions**, exactly these templates:
  ``What colour is the {shape}?`` (only when exactly one object has that shape;
  answer: its colour), ``What shape is the {colour} object?`` (only when exactly
  one object has that colour; answer: its shape), ``How many {colour} objects are
  there?`` (answer: a digit ``0``..``4``).
- **Answer**: one lowercase word. Accuracy: the first word of the answer equals it.
- **Target tokens**: every visual token whose cell overlaps an object the
  question is about (for counting: every object of that colour; none for 0).

Within the spec this renderer varies what another renderer might do differently:
box aspect (up to 15 % off square), star inner radius, anti-aliased or hard
edges, noise level. Each sample is drawn from ``(seed, split, index)``; the
question is chosen first (template, then its answer uniformly), then a scene that
fits it, so answers are balanced. ``train`` and ``heldout`` use disjoint seed
streams and never share a scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from arr_coc.errors import EmptyDatasetError, UnknownDatasetError
from arr_coc.synthetic import GridFn, Sample, patch_grid
from arr_coc.vocabulary import QUESTION_KINDS

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "star", "cross")
COUNTS = ("0", "1", "2", "3", "4")
ANSWER_WORDS = (*COLOURS, *SHAPES, *COUNTS)
SPLITS = {"train": 0, "heldout": 1}

MIN_SIDE, MAX_SIDE = 320, 640
MIN_OBJECTS, MAX_OBJECTS = 3, 6
BOX_MIN, BOX_MAX = 0.06, 0.14  # box side as a share of the shorter image side
GAP = 4  # px between bounding boxes
MAX_NOISE = 8.0
SUPERSAMPLE = 4


def question_for(kind: str, subject: str) -> str:
    """The template of ``kind`` filled with a shape (``colour``) or a colour (``shape``, ``count``)."""
    if kind == "colour":
        return f"What colour is the {subject}?"
    if kind == "shape":
        return f"What shape is the {subject} object?"
    if kind == "count":
        return f"How many {subject} objects are there?"
    raise ValueError(f"unknown question kind {kind!r}; known: {', '.join(QUESTION_KINDS)}")


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: its box ``(x0, y0, x1, y1)`` in pixels (exclusive end) and pixel ``mask [H, W]``."""

    shape: str
    colour: str
    box: tuple[int, int, int, int]
    mask: np.ndarray


@dataclass(frozen=True)
class Scene:
    image: Image.Image
    objects: tuple[SceneObject, ...]


def shape_outline(shape: str, box: tuple[float, float, float, float]) -> list[tuple[float, float]] | None:
    """Polygon of ``shape`` filling ``box = (x0, y0, x1, y1)``; ``None`` for a circle (an ellipse)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if shape == "circle":
        return None
    if shape == "square":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if shape == "triangle":
        return [(x0 + w / 2, y0), (x1, y1), (x0, y1)]
    if shape == "cross":
        a, b = x0 + w / 3, x0 + 2 * w / 3
        c, d = y0 + h / 3, y0 + 2 * h / 3
        return [(a, y0), (b, y0), (b, c), (x1, c), (x1, d), (b, d), (b, y1), (a, y1), (a, d), (x0, d), (x0, c), (a, c)]
    raise ValueError(f"unknown shape {shape!r}")


def star_outline(box: tuple[float, float, float, float], inner: float) -> list[tuple[float, float]]:
    """Five-pointed star, first point up, scaled to fill ``box``; ``inner`` = inner / outer radius."""
    x0, y0, x1, y1 = box
    points = []
    for i in range(10):
        radius = 1.0 if i % 2 == 0 else inner
        angle = -math.pi / 2 + i * math.pi / 5
        points.append((radius * math.cos(angle), radius * math.sin(angle)))
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    sx, sy = (x1 - x0) / (max(xs) - min(xs)), (y1 - y0) / (max(ys) - min(ys))
    return [(x0 + (x - min(xs)) * sx, y0 + (y - min(ys)) * sy) for x, y in points]


def render_mask(shape: str, box: tuple[int, int, int, int], inner: float, smooth: bool) -> np.ndarray:
    """``[y1 - y0, x1 - x0]`` float coverage in [0, 1] of ``shape`` filling ``box``.

    ``smooth`` draws at ``SUPERSAMPLE`` x and averages (anti-aliased edges), else hard edges.
    """
    x0, y0, x1, y1 = box
    scale = SUPERSAMPLE if smooth else 1
    width, height = (x1 - x0) * scale, (y1 - y0) * scale
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    local = (0.0, 0.0, width - 1.0, height - 1.0)
    outline = star_outline(local, inner) if shape == "star" else shape_outline(shape, local)
    if outline is None:
        draw.ellipse(local, fill=255)
    else:
        draw.polygon(outline, fill=255)
    if smooth:
        canvas = canvas.resize((x1 - x0, y1 - y0), Image.Resampling.BOX)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def target_mask(
    objects: list[SceneObject] | tuple[SceneObject, ...], image_size: tuple[int, int], grid: tuple[int, int]
) -> torch.Tensor:
    """``[H', W']`` bool: the tokens whose cell overlaps any pixel of ``objects``.

    Token ``(i, j)`` covers original pixels ``[i H / H', (i + 1) H / H') x [j W / W', (j + 1) W / W')``
    (the processor resizes the whole image onto the grid).
    """
    width, height = image_size
    rows, cols = grid
    mask = np.zeros(grid, dtype=bool)
    for obj in objects:
        ys, xs = np.nonzero(obj.mask)
        mask[ys * rows // height, xs * cols // width] = True
    return torch.from_numpy(mask)


def token_owners(scene: Scene, grid: tuple[int, int], min_share: float = 0.15) -> torch.Tensor:
    """``[H', W']`` long: ``1 + i`` where ``scene.objects[i]`` covers most of the token (at least
    ``min_share`` of its area), ``0`` on background."""
    width, height = scene.image.size
    rows, cols = grid
    ys, xs = np.mgrid[0:height, 0:width]
    cell = (ys * rows // height) * cols + xs * cols // width
    area = np.bincount(cell.ravel(), minlength=rows * cols)
    best = np.full(rows * cols, min_share, dtype=np.float64)
    owners = np.zeros(rows * cols, dtype=np.int64)
    for index, obj in enumerate(scene.objects):
        share = np.bincount(cell[obj.mask], minlength=rows * cols) / area
        better = share > best
        best[better] = share[better]
        owners[better] = 1 + index
    return torch.from_numpy(owners.reshape(rows, cols))


def token_labels(scene: Scene, grid: tuple[int, int], min_share: float = 0.15) -> torch.Tensor:
    """``[4, H', W']`` long: per token the colour (``0`` background, ``1 + i`` for ``COLOURS``), the shape
    (``0`` none, ``1 + i`` for ``SHAPES``) of the object covering most of it (:func:`token_owners`),
    ``1`` where an object's box centre falls in the token, and the number of objects in the scene
    that share the token's colour (``0`` on background).

    Dense labels for teaching a vision tower what each visual token shows.
    """
    return owner_labels(scene, token_owners(scene, grid, min_share))


def centre_token(obj: SceneObject, size: tuple[int, int], grid: tuple[int, int]) -> tuple[int, int]:
    """``(row, col)`` of the token on grid ``(H', W')`` holding the centre of ``obj``'s box in an image of ``size``."""
    (width, height), (rows, cols) = size, grid
    cx, cy = (obj.box[0] + obj.box[2]) / 2, (obj.box[1] + obj.box[3]) / 2
    return int(cy * rows // height), int(cx * cols // width)


def centre_tokens(scene: Scene, grid: tuple[int, int], colour: str) -> torch.Tensor:
    """``[H', W']`` bool: the box-centre tokens of the objects of ``colour`` (what a count question counts)."""
    mask = torch.zeros(grid, dtype=torch.bool)
    for obj in scene.objects:
        if obj.colour == colour:
            mask[centre_token(obj, scene.image.size, grid)] = True
    return mask


def owner_labels(scene: Scene, owners: torch.Tensor) -> torch.Tensor:
    """:func:`token_labels` from the token owners ``[H', W']`` of :func:`token_owners`."""
    width, height = scene.image.size
    rows, cols = owners.shape
    owners = owners.flatten()
    labels = torch.zeros((4, rows * cols), dtype=torch.long)
    colour_names = list(COLOURS)
    for index, obj in enumerate(scene.objects):
        owned = owners == 1 + index
        labels[0, owned] = 1 + colour_names.index(obj.colour)
        labels[1, owned] = 1 + SHAPES.index(obj.shape)
        labels[3, owned] = sum(o.colour == obj.colour for o in scene.objects)
        row, col = centre_token(obj, (width, height), (rows, cols))
        labels[2, row * cols + col] = 1
    return labels.reshape(4, rows, cols)


class ShapesVQA:
    """The synthetic VQA task as a dataset of :class:`~arr_coc.synthetic.Sample` s.

    Args:
        size: number of samples (>= 1).
        split: ``"train"`` or ``"heldout"`` (disjoint seed streams).
        seed: base seed; the same arguments give the same samples on every machine.
        grid_for: the VLM's token grid ``(H', W')`` of a ``width x height`` image,
            on which target masks are given (default: 28-pixel tokens).
        kinds: question kinds to draw (default all three, in equal shares).
    """

    def __init__(
        self,
        size: int,
        split: str = "train",
        seed: int = 0,
        grid_for: GridFn | None = None,
        kinds: tuple[str, ...] = QUESTION_KINDS,
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise EmptyDatasetError(f"a dataset needs at least one sample, got size={size!r}", field="size")
        if split not in SPLITS:
            raise UnknownDatasetError(f"unknown split {split!r}; known: {', '.join(SPLITS)}", field="split")
        unknown = [k for k in kinds if k not in QUESTION_KINDS]
        if unknown or not kinds:
            raise UnknownDatasetError(
                f"unknown question kinds {unknown or kinds!r}; known: {', '.join(QUESTION_KINDS)}", field="kinds"
            )
        self.size = size
        self.split = split
        self.seed = seed
        self.grid_for = grid_for or patch_grid()
        self.kinds = tuple(kinds)

    def __len__(self) -> int:
        return self.size

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLITS[self.split], index, 0x5A5E])

    def __getitem__(self, index: int) -> Sample:
        return self.sample_and_scene(index)[0]

    def sample_and_scene(self, index: int) -> tuple[Sample, Scene]:
        """The sample and the scene it was drawn from (objects, boxes and pixel masks)."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not -self.size <= index < self.size:
            raise IndexError(f"sample {index!r} out of range for a dataset of {self.size}")
        rng = self._rng(int(index) % self.size)
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        shapes, colours, subject, answer, about = plan_scene(kind, rng)
        scene = draw_scene(shapes, colours, rng)
        grid = self.grid_for(scene.image.width, scene.image.height)
        mask = target_mask([scene.objects[i] for i in about], scene.image.size, grid)
        return Sample(scene.image, question_for(kind, subject), answer, mask, kind), scene


def plan_scene(kind: str, rng: np.random.Generator) -> tuple[list[str], list[str], str, str, list[int]]:
    """Shapes and colours of the objects that make ``kind``'s answer uniform over its words.

    Returns ``(shapes, colours, subject, answer, about)``: ``about`` indexes the
    objects the question is about.
    """
    colour_names, shape_names = list(COLOURS), list(SHAPES)
    if kind == "count":
        count = int(rng.integers(len(COUNTS)))
        n = int(rng.integers(max(MIN_OBJECTS, count + (count == 0)), MAX_OBJECTS + 1))
        subject = colour_names[int(rng.integers(len(colour_names)))]
        others = [c for c in colour_names if c != subject]
        colours = [subject] * count + [others[int(i)] for i in rng.integers(len(others), size=n - count)]
        shapes = [shape_names[int(i)] for i in rng.integers(len(shape_names), size=n)]
        order = rng.permutation(n)
        colours, shapes = [colours[i] for i in order], [shapes[i] for i in order]
        return shapes, colours, subject, str(count), [i for i in range(n) if colours[i] == subject]
    n = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    unique_names, other_names = (shape_names, colour_names) if kind == "colour" else (colour_names, shape_names)
    subject = unique_names[int(rng.integers(len(unique_names)))]
    rest = [u for u in unique_names if u != subject]
    unique = [subject] + [rest[int(i)] for i in rng.integers(len(rest), size=n - 1)]
    other = [other_names[int(i)] for i in rng.integers(len(other_names), size=n)]
    order = rng.permutation(n)
    unique, other = [unique[i] for i in order], [other[i] for i in order]
    target = unique.index(subject)
    shapes, colours = (unique, other) if kind == "colour" else (other, unique)
    answer = colours[target] if kind == "colour" else shapes[target]
    return shapes, colours, subject, answer, [target]


def _place_boxes(n: int, width: int, height: int, rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """``n`` boxes inside the image, each side 6-14 % of the shorter side, >= ``GAP`` px apart."""
    short = min(width, height)
    lo, hi = math.ceil(BOX_MIN * short), math.floor(BOX_MAX * short)
    for _ in range(100):
        boxes: list[tuple[int, int, int, int]] = []
        for _ in range(n):
            for _ in range(200):
                w = int(rng.integers(lo, hi + 1))
                h = int(np.clip(round(w * rng.uniform(0.87, 1.15)), lo, hi))
                x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
                box = (x0, y0, x0 + w, y0 + h)
                if all(_apart(box, other) for other in boxes):
                    boxes.append(box)
                    break
        if len(boxes) == n:
            return boxes
    raise RuntimeError(f"could not place {n} objects on a {width}x{height} image")  # pragma: no cover


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[2] + GAP <= b[0] or b[2] + GAP <= a[0] or a[3] + GAP <= b[1] or b[3] + GAP <= a[1]


def draw_scene(shapes: list[str], colours: list[str], rng: np.random.Generator) -> Scene:
    """A random scene of the spec holding these objects (in this order)."""
    width, height = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
    top, bottom = rng.integers(60, 191, size=(2, 3)).astype(np.float32)
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    pixels = top + (bottom - top) * ramp + np.zeros((1, width, 1), dtype=np.float32)
    pixels += rng.standard_normal((height, width, 3), dtype=np.float32) * np.float32(rng.uniform(0.0, MAX_NOISE))
    np.clip(pixels, 0, 255, out=pixels)
    smooth = bool(rng.integers(2))
    objects = []
    for shape, colour, box in zip(shapes, colours, _place_boxes(len(shapes), width, height, rng)):
        x0, y0, x1, y1 = box
        coverage = render_mask(shape, box, float(rng.uniform(0.38, 0.5)), smooth)
        alpha = coverage[..., None]
        region = pixels[y0:y1, x0:x1]
        region *= 1 - alpha
        region += np.asarray(COLOURS[colour], dtype=np.float32) * alpha
        mask = np.zeros((height, width), dtype=bool)
        mask[y0:y1, x0:x1] = coverage >= 0.5
        objects.append(SceneObject(shape, colour, box, mask))
    image = Image.fromarray(pixels.round().astype(np.uint8), "RGB")
    return Scene(image, tuple(objects))
