"""Datasets of (image, question, answer, target mask) by name.

- ``vqa``: the synthetic VQA task (:mod:`arr_coc.tasks.shapes_vqa`), a public spec;
  the embedded default model and scorer are trained on it.
- ``synthetic``: the older shapes-by-quadrant set (:mod:`arr_coc.synthetic`).

Without a dataset, :mod:`arr_coc.tasks.image_questions` reads (image, question) pairs
from the user's own files (a folder of images, a JSONL question file), with no answers.
"""

from __future__ import annotations

from arr_coc.errors import UnknownDatasetError
from arr_coc.synthetic import Dataset, GridFn, SyntheticShapes
from arr_coc.tasks.shapes_vqa import ShapesVQA

DATASETS = ("vqa", "synthetic")


def check_dataset(name: str) -> str:
    """``name`` if a dataset of that name exists, else :class:`UnknownDatasetError`."""
    if name not in DATASETS:
        raise UnknownDatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}", field="dataset")
    return name


def load_dataset(
    name: str, split: str, size: int, *, seed: int = 0, image_size: int = 336, grid_for: GridFn | None = None
) -> Dataset:
    """A dataset by name; typed errors for unknown names, splits or empty sizes.

    ``image_size`` is the side of ``synthetic`` images; ``vqa`` scenes size themselves (320-640 px).
    """
    check_dataset(name)
    if name == "vqa":
        return ShapesVQA(size, split, seed, grid_for)
    return SyntheticShapes(size, split, seed, image_size, grid_for)
