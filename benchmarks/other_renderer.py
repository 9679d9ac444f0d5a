"""Does the embedded model generalise to scenes drawn by another implementation of the spec?

An independent renderer of the synthetic VQA spec (``arr_coc/tasks/shapes_vqa.py``
states it): shapes are rasterised analytically with numpy (implicit equations and
point-in-polygon tests at pixel centres, no Pillow drawing, no anti-aliasing),
boxes are square, the star's inner radius is 0.382 (the regular pentagram), noise
sigma is drawn from 0-8, and questions are sampled the other way round: first a
random scene (colours and shapes uniform, repeats allowed), then a template and a
subject among those the scene makes askable. The script prints accuracy (also per
question template) and target recall for each of ``--variants`` on these scenes next
to the same figures on this project's own held-out split.

    .venv/bin/python benchmarks/other_renderer.py --size 200
    .venv/bin/python benchmarks/other_renderer.py --size 600 --model DIR    # other weights, the embedded scorer
    .venv/bin/python benchmarks/other_renderer.py --sets other --variants full arr-coc-5 divprune-5 cdpruner-5
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from PIL import Image

from arr_coc.evaluation import evaluate_variant, summarize
from arr_coc.synthetic import Sample
from arr_coc.tasks.shapes_vqa import COLOURS, SHAPES, ShapesVQA, question_for
from arr_coc.training.data import processor_grid
from arr_coc.variants import ad_hoc, get_variant
from arr_coc.vlm.pipeline import VLMPipeline
from arr_coc.vlm.testbed import EMBEDDED_SCORER
from arr_coc.vocabulary import QUESTION_KINDS
from training_hooks.jobs.quality_job import per_kind_accuracy


def inside_polygon(xs: np.ndarray, ys: np.ndarray, points: list[tuple[float, float]]) -> np.ndarray:
    """Even-odd rule at pixel centres ``xs, ys`` (same shape) for a closed polygon."""
    inside = np.zeros(xs.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]):
        crosses = (y0 > ys) != (y1 > ys)
        at = x0 + (ys - y0) * (x1 - x0) / (y1 - y0 + 1e-12)
        inside ^= crosses & (xs < at)
    return inside


def shape_mask(shape: str, x0: int, y0: int, side: int, width: int, height: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    u, v = (xs - x0) / side, (ys - y0) / side  # box coordinates in [0, 1]
    in_box = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    if shape == "circle":
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    if shape == "square":
        return in_box
    if shape == "triangle":
        return in_box & (np.abs(u - 0.5) <= v / 2)
    if shape == "cross":
        third = lambda w: (w >= 1 / 3) & (w <= 2 / 3)  # noqa: E731
        return in_box & (third(u) | third(v))
    angles = [-math.pi / 2 + i * math.pi / 5 for i in range(10)]
    radii = [0.5 if i % 2 == 0 else 0.5 * 0.382 for i in range(10)]
    points = [(0.5 + r * math.cos(a), 0.55 + r * math.sin(a)) for r, a in zip(radii, angles)]
    return inside_polygon(u, v, points)


def draw(rng: np.random.Generator) -> tuple[Image.Image, list[tuple[str, str, np.ndarray]]]:
    width, height = (int(v) for v in rng.integers(320, 641, size=2))
    top, bottom = rng.uniform(60, 190, size=(2, 3))
    t = np.linspace(0, 1, height)[:, None, None]
    pixels = np.broadcast_to(top + (bottom - top) * t, (height, width, 3)).copy()
    pixels += rng.normal(0, rng.uniform(0, 8), pixels.shape)
    short = min(width, height)
    boxes: list[tuple[int, int, int]] = []
    objects = []
    for _ in range(int(rng.integers(3, 7))):
        for _ in range(500):
            side = int(rng.integers(math.ceil(0.06 * short), int(0.14 * short) + 1))
            x0, y0 = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
            if all(
                x0 + side + 4 <= bx or bx + bs + 4 <= x0 or y0 + side + 4 <= by or by + bs + 4 <= y0
                for bx, by, bs in boxes
            ):
                break
        else:
            continue
        boxes.append((x0, y0, side))
        shape, colour = SHAPES[int(rng.integers(5))], list(COLOURS)[int(rng.integers(8))]
        mask = shape_mask(shape, x0, y0, side, width, height)
        pixels[mask] = COLOURS[colour]
        objects.append((shape, colour, mask))
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8)), objects


class OtherRenderer:
    """Held-out samples from the independent renderer (same ``Sample`` contract as ``ShapesVQA``)."""

    def __init__(self, size: int, grid_for, seed: int = 7) -> None:
        self.size, self.grid_for, self.seed = size, grid_for, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Sample:
        rng = np.random.default_rng([self.seed, 99, index])
        while True:
            image, objects = draw(rng)
            shapes, colours = [o[0] for o in objects], [o[1] for o in objects]
            askable = [("colour", s) for s in set(shapes) if shapes.count(s) == 1]
            askable += [("shape", c) for c in set(colours) if colours.count(c) == 1]
            askable += [("count", c) for c in COLOURS if colours.count(c) <= 4]
            kind, subject = sorted(askable)[int(rng.integers(len(askable)))]
            about = [o for o in objects if (o[0] if kind == "colour" else o[1]) == subject]
            if kind == "colour":
                answer = about[0][1]
            elif kind == "shape":
                answer = about[0][0]
            else:
                answer = str(len(about))
            rows, cols = self.grid_for(image.width, image.height)
            target = np.zeros((rows, cols), dtype=bool)
            for _, _, mask in about:
                ys, xs = np.nonzero(mask)
                target[ys * rows // image.height, xs * cols // image.width] = True
            return Sample(image, question_for(kind, subject), answer, torch.from_numpy(target), kind)


def variant_named(name: str):
    """A registered variant, or an ad-hoc one written ``method@budget`` or ``method@budget@stage``."""
    if "@" not in name:
        return get_variant(name)
    method, budget, *stage = name.split("@")
    return ad_hoc(method, budget if budget == "auto" else float(budget), *stage)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--model", default=None, help="VLM directory (default: the embedded testbed)")
    parser.add_argument("--scorer", default=str(EMBEDDED_SCORER), help="scorer directory (default: the embedded one)")
    parser.add_argument(
        "--variants", nargs="+", default=["full", "arr-coc-25", "arr-coc-10"], help="registered variants"
    )
    parser.add_argument("--sets", nargs="+", choices=["own", "other"], default=["own", "other"], help="which scenes")
    args = parser.parse_args()
    variants = [variant_named(name) for name in args.variants]  # bad names fail before any model loads
    pipeline = VLMPipeline.from_pretrained(args.model, scorer=args.scorer, device="cpu", dtype="fp32")
    grid_for = processor_grid(pipeline.vlm.processor)
    sets = {
        "own renderer (held-out)": ShapesVQA(args.size, "heldout", 0, grid_for) if "own" in args.sets else None,
        "other renderer": OtherRenderer(args.size, grid_for) if "other" in args.sets else None,
    }
    kinds = QUESTION_KINDS
    print(f"{'scenes':<24} {'variant':<11} {'accuracy':>8} {'recall':>7}" + "".join(f" {k:>7}" for k in kinds))
    for name, dataset in sets.items():
        if dataset is None:
            continue
        for variant in variants:
            records = list(evaluate_variant(pipeline, variant, dataset, batch_size=8, max_new_tokens=4))
            summary = {**summarize(records, 1.0), **per_kind_accuracy(records)}
            by_kind = "".join(f" {summary.get(f'accuracy/{k}', float('nan')):>7.3f}" for k in kinds)
            print(f"{name:<24} {variant.name:<11} {summary['accuracy']:>8.3f} {summary['recall']:>7.3f}{by_kind}")


if __name__ == "__main__":
    main()
