"""The synthetic VQA task: the generator follows its public spec, and its target masks match the drawing."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
import torch

from arr_coc.errors import EmptyDatasetError, UnknownDatasetError
from arr_coc.synthetic import patch_grid
from arr_coc.tasks import check_dataset, load_dataset
from arr_coc.tasks.shapes_vqa import (
    ANSWER_WORDS,
    COLOURS,
    COUNTS,
    SHAPES,
    ShapesVQA,
    draw_scene,
    plan_scene,
    target_mask,
)

TEMPLATES = {
    "colour": re.compile(rf"^What colour is the ({'|'.join(SHAPES)})\?$"),
    "shape": re.compile(rf"^What shape is the ({'|'.join(COLOURS)}) object\?$"),
    "count": re.compile(rf"^How many ({'|'.join(COLOURS)}) objects are there\?$"),
}


def _scene_with_plan(index: int, kind: str):
    rng = np.random.default_rng([7, index])
    shapes, colours, subject, answer, about = plan_scene(kind, rng)
    return draw_scene(shapes, colours, rng), subject, answer, about


@pytest.mark.parametrize("kind", ["colour", "shape", "count"])
def test_questions_follow_the_templates_and_answers_are_true(kind: str) -> None:
    for index in range(40):
        scene, subject, answer, about = _scene_with_plan(index, kind)
        objects = scene.objects
        assert 3 <= len(objects) <= 6
        if kind == "colour":
            matching = [o for o in objects if o.shape == subject]
            assert len(matching) == 1 and answer == matching[0].colour
        elif kind == "shape":
            matching = [o for o in objects if o.colour == subject]
            assert len(matching) == 1 and answer == matching[0].shape
        else:
            matching = [o for o in objects if o.colour == subject]
            assert answer == str(len(matching)) and answer in COUNTS
        assert [objects[i] for i in about] == matching


def test_scenes_are_inside_the_spec() -> None:
    for index in range(40):
        scene, *_ = _scene_with_plan(index, ["colour", "shape", "count"][index % 3])
        width, height = scene.image.size
        assert 320 <= width <= 640 and 320 <= height <= 640 and scene.image.mode == "RGB"
        short = min(width, height)
        boxes = [o.box for o in scene.objects]
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
            assert 0.06 * short - 1 <= x1 - x0 <= 0.14 * short + 1 and 0.06 * short - 1 <= y1 - y0 <= 0.14 * short + 1
            for other in boxes[i + 1 :]:
                gap_x = max(other[0] - x1, x0 - other[2])
                gap_y = max(other[1] - y1, y0 - other[3])
                assert max(gap_x, gap_y) >= 4, "bounding boxes must be at least 4 px apart"
        pixels = np.asarray(scene.image).astype(int)
        drawn = np.zeros(pixels.shape[:2], dtype=bool)
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            drawn[max(0, y0 - 1) : y1 + 1, max(0, x0 - 1) : x1 + 1] = True
            inside = pixels[obj.mask]
            assert (np.abs(inside - np.asarray(COLOURS[obj.colour])) <= 64).all(axis=1).mean() > 0.9
        background = pixels[~drawn]
        assert background.min() >= 60 - 40 and background.max() <= 190 + 40, "muted gradient plus sigma <= 8 noise"


def test_target_masks_match_the_drawn_objects_on_any_grid() -> None:
    scene, _, _, about = _scene_with_plan(3, "count")
    width, height = scene.image.size
    for grid in [(height // 28, width // 28), (7, 9), (1, 1), (height, width)]:
        mask = target_mask([scene.objects[i] for i in about], (width, height), grid)
        assert mask.shape == grid and mask.dtype == torch.bool
        expected = np.zeros(grid, dtype=bool)
        for i in about:
            ys, xs = np.nonzero(scene.objects[i].mask)
            for y, x in zip(ys, xs):
                expected[int(y * grid[0] / height), int(x * grid[1] / width)] = True
        assert np.array_equal(mask.numpy(), expected)
    # an object's cells overlap its box and nothing far from it
    obj = scene.objects[0]
    grid = (height // 28, width // 28)
    mask = target_mask([obj], (width, height), grid)
    rows, cols = np.nonzero(mask.numpy())
    x0, y0, x1, y1 = obj.box
    assert rows.min() >= y0 * grid[0] // height and rows.max() <= (y1 - 1) * grid[0] // height
    assert cols.min() >= x0 * grid[1] // width and cols.max() <= (x1 - 1) * grid[1] // width


def test_dataset_is_seeded_balanced_and_split() -> None:
    grid_for = patch_grid(28)
    train, again = ShapesVQA(90, "train", seed=1, grid_for=grid_for), ShapesVQA(90, "train", seed=1, grid_for=grid_for)
    heldout = ShapesVQA(90, "heldout", seed=1, grid_for=grid_for)
    first, second = train[5], again[5]
    assert np.array_equal(np.asarray(first.image), np.asarray(second.image))
    assert (first.question, first.answer) == (second.question, second.answer)
    assert torch.equal(first.target_mask, second.target_mask)
    train_images = {np.asarray(train[i].image).tobytes() for i in range(30)}
    assert not any(np.asarray(heldout[i].image).tobytes() in train_images for i in range(30))
    samples = [train[i] for i in range(90)]
    kinds = Counter(s.kind for s in samples)
    assert set(kinds) == {"colour", "shape", "count"} and min(kinds.values()) >= 15
    for sample in samples:
        assert TEMPLATES[sample.kind].match(sample.question), sample.question
        assert sample.answer in ANSWER_WORDS
        assert sample.target_mask.shape == grid_for(sample.image.width, sample.image.height)
        assert bool(sample.target_mask.any()) == (sample.answer != "0")
    counts = Counter(s.answer for s in samples if s.kind == "count")
    assert len(counts) >= 4, "count answers spread over 0..4"


def test_bad_dataset_arguments_are_typed_errors() -> None:
    with pytest.raises(EmptyDatasetError):
        ShapesVQA(0)
    with pytest.raises(UnknownDatasetError):
        ShapesVQA(4, split="test")
    with pytest.raises(UnknownDatasetError):
        ShapesVQA(4, kinds=("position",))
    with pytest.raises(UnknownDatasetError):
        check_dataset("coco")
    with pytest.raises(IndexError):
        ShapesVQA(4)[4]
    assert isinstance(load_dataset("vqa", "heldout", 3), ShapesVQA)
