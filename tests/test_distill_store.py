"""Distillation in bounded memory: pairs that keep only where their image is, and encoded samples on disk."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence

import pytest
import torch
from PIL import Image

from arr_coc.distill.config import distill_config
from arr_coc.distill.data import TaskImage, distill_pairs, encoded_pairs, task_pairs
from arr_coc.distill.maps import Pair, TeacherRecord
from arr_coc.distill.store import StoredSample, StoredSamples, write_samples
from arr_coc.errors import NoImagesError
from arr_coc.tasks import image_questions
from arr_coc.tasks.image_questions import (
    UNREADABLE,
    ImageFile,
    ImageFileQuestion,
    find_images,
    load_images,
    load_question_file,
    template_questions,
)
from arr_coc.tasks.shapes_vqa import ShapesVQA
from arr_coc.training.config import train_config
from arr_coc.training.data import CachedSample, batches
from arr_coc.training.loss import teacher_top
from arr_coc.training.recall import flat_recall
from testkit.drawing import gradient, shapes

FIELDS = ("grid", "question", "answer", "kind")
TENSORS = ("query", "target", "teacher", "features", "question_tokens")


@pytest.fixture(scope="module")
def embedded():
    from arr_coc.vlm.pipeline import VLMPipeline

    return VLMPipeline.from_pretrained(None, device="cpu", dtype="float32", decode="eager")


@pytest.fixture
def decodes(monkeypatch) -> list:
    """Every path :func:`arr_coc.images.load_image` is asked to decode through the image-question readers."""
    seen = []
    original = image_questions.load_image

    def counting(source, **limits):
        seen.append(source)
        return original(source, **limits)

    monkeypatch.setattr(image_questions, "load_image", counting)
    return seen


def user_folder(root, count: int = 3):
    """``count`` good PNGs and one file that is not a PNG."""
    folder = root / "images"
    folder.mkdir()
    for i in range(count):
        shapes(64 + 8 * i, 48, seed=i).save(folder / f"scene{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def holds_pixels(item) -> bool:
    return any(isinstance(value, Image.Image) for value in vars(item).values())


def random_sample(generator: torch.Generator, grid: tuple[int, int], with_features: bool) -> CachedSample:
    """A sample with a processor-like image on the 1/255 grid ``[3, 14 H', 14 W']`` and every optional tensor."""
    h, w = grid
    image = torch.randint(0, 256, (3, 14 * h, 14 * w), generator=generator).float() / 255
    return CachedSample(
        image=image,
        grid=grid,
        query=torch.randn(16, generator=generator),
        target=torch.rand(grid, generator=generator) > 0.7,
        features=torch.randn(h * w, 16, generator=generator) if with_features else None,
        question=f"What colour is the {h}x{w} star?",
        answer="red",
        kind="colour",
        question_tokens=torch.randn(5, 16, generator=generator) if with_features else None,
        teacher=torch.rand(grid, generator=generator),
    )


def assert_same_sample(stored, sample: CachedSample, image_atol: float = 1e-6) -> None:
    assert tuple(stored.image.shape) == tuple(sample.image.shape) and stored.image.dtype == torch.float32
    assert torch.allclose(stored.image, sample.image, atol=image_atol, rtol=0)
    assert all(getattr(stored, name) == getattr(sample, name) for name in FIELDS)
    for name in TENSORS:
        mine, theirs = getattr(stored, name), getattr(sample, name)
        assert (mine is None) == (theirs is None), name
        if theirs is not None:
            assert mine.dtype == theirs.dtype and torch.equal(mine, theirs), name


def test_stored_samples_read_back_what_was_written_chunk_by_chunk(tmp_path) -> None:
    generator = torch.Generator().manual_seed(0)
    grids = [(6, 8), (8, 6), (6, 8), (5, 5), (7, 9)]
    samples = [random_sample(generator, grid, with_features=i % 2 == 0) for i, grid in enumerate(grids)]
    samples[1].teacher = None
    stored = write_samples(iter(samples), tmp_path / "cache", chunk_size=2)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "samples-00000.safetensors",
        "samples-00001.safetensors",
        "samples-00002.safetensors",
    ]
    assert isinstance(stored, Sequence) and len(stored) == 5
    for item, sample in zip(stored, samples, strict=True):
        assert_same_sample(item, sample)
    assert_same_sample(stored[-1], samples[-1])
    assert_same_sample(stored[1:4][2], samples[3])
    assert len(stored[:2]) == 2 and len(stored[: 10**6]) == 5 and len(stored[5:]) == 0
    assert isinstance(stored[:2], StoredSamples)
    with pytest.raises(IndexError):
        stored[5]
    assert_same_sample(stored[2].loaded(), samples[2])
    assert isinstance(stored[2].loaded(), CachedSample)


def test_stored_samples_keep_only_the_recent_reads_in_memory(tmp_path) -> None:
    generator = torch.Generator().manual_seed(1)
    samples = [random_sample(generator, (4, 4), with_features=False) for _ in range(10)]
    stored = write_samples(samples, tmp_path, chunk_size=3, recent=4)
    items = list(stored)
    assert all(isinstance(item, StoredSample) for item in items)
    for item in items:
        _ = (item.image, item.query)
    assert len(stored._tensors._kept) == 4
    assert not any(isinstance(v, torch.Tensor) for item in items for v in vars(item).values())
    first = items[0].image
    first.mul_(0)  # a caller's tensor is its own
    assert torch.allclose(items[0].image, samples[0].image, atol=1e-6)


def test_batches_index_only_the_samples_of_each_batch() -> None:
    class Counted(Sequence):
        def __init__(self, items: list) -> None:
            self.items, self.reads = items, 0

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, index):
            self.reads += 1
            return self.items[index]

        def __iter__(self):
            raise AssertionError("batches must not iterate the whole set")

    counted = Counted(list(range(10)))
    stream = batches(counted, 4, seed=3)
    first_pass = [next(stream) for _ in range(3)]
    assert [len(b) for b in first_pass] == [4, 4, 2] and counted.reads == 10
    expected = list(range(10))
    random.Random(3).shuffle(expected)  # the order a shuffled copy of the samples had
    assert [i for b in first_pass for i in b] == expected
    assert sorted(i for b in [next(stream) for _ in range(3)] for i in b) == list(range(10))


def test_a_folder_gives_pairs_that_keep_only_the_file_and_count_the_unreadable_one(embedded, tmp_path, decodes) -> None:
    folder = user_folder(tmp_path)
    config = distill_config({"images": str(folder)})
    pairs, skipped = distill_pairs(config, embedded)
    assert skipped == {UNREADABLE: 1}
    assert len(pairs) == 9  # three templates per readable image
    assert len(decodes) == 4  # each file decoded once, to check it
    assert not any(holds_pixels(pair) for pair in pairs)
    assert all(isinstance(pair.picture, ImageFile) for pair in pairs)
    assert pairs[0].picture is pairs[2].picture and pairs[3].picture.path.name == "scene1.png"
    image = pairs[3].image
    assert image.mode == "RGB" and image.size == (72, 48) and len(decodes) == 5
    assert pairs[3].image is not image and len(decodes) == 6  # decoded again, never kept
    eager, eager_skipped = load_images(folder)
    assert [source for source, _ in eager] == [str(f.path) for _, f in find_images(folder)[0]]
    assert eager_skipped == skipped


def test_a_folder_of_unreadable_images_is_still_an_error(tmp_path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "x.png").write_bytes(b"nope")
    (folder / "y.jpg").write_bytes(b"")
    with pytest.raises(NoImagesError, match="none of the 2 image files.*unreadable image: 2"):
        find_images(folder)


def test_a_lazy_question_file_checks_each_image_once_and_skips_as_the_eager_one(tmp_path, decodes) -> None:
    folder = user_folder(tmp_path, count=2)
    lines = [
        {"image": "scene0.png", "question": "What colour is the circle?"},
        {"image": "broken.png", "question": "What is this?"},
        {"image": "scene1.png", "question": "How many objects are there?"},
        {"image": "scene0.png", "question": "Is it daytime?"},
        "{not json",
    ]
    path = folder / "questions.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    lazy = load_question_file(path, lazy=True)
    assert len(decodes) == 3
    assert all(isinstance(q, ImageFileQuestion) and not holds_pixels(q) for q in lazy)
    assert lazy.samples[0].file is lazy.samples[2].file
    eager = load_question_file(path)
    assert lazy.skipped == eager.skipped == {UNREADABLE: 1, "bad json": 1}
    assert [(q.question, q.source) for q in lazy] == [(q.question, q.source) for q in eager]
    assert lazy.samples[1].image.tobytes() == eager.samples[1].image.tobytes()
    dataset = lazy.as_dataset()
    assert dataset[0].image.size == eager.samples[0].image.size


def test_templates_of_image_files_read_no_image(tmp_path, decodes) -> None:
    gradient(32, 32).save(tmp_path / "g.png")
    file = ImageFile(tmp_path / "g.png")
    questions = template_questions([("g.png", file), ("x.png", shapes(32, 32))], seed=1)
    assert not decodes
    assert [type(q).__name__ for q in questions] == ["ImageFileQuestion"] * 3 + ["ImageQuestion"] * 3
    assert questions.samples[0].image.size == (32, 32)


def test_task_pairs_draw_their_scene_again_when_used(embedded) -> None:
    config = distill_config({"train_size": 4, "seed": 2})
    pairs = task_pairs(config, embedded)
    assert not any(holds_pixels(pair) for pair in pairs)
    assert all(isinstance(pair.picture, TaskImage) for pair in pairs)
    drawn = pairs[1].picture.dataset[1]
    assert pairs[1].image.tobytes() == drawn.image.tobytes()
    assert torch.equal(pairs[1].target, drawn.target_mask) and pairs[1].question == drawn.question
    assert pairs[1].source == "vqa:train:2:1"


def test_stored_encoding_equals_the_in_memory_encoding(embedded, tmp_path) -> None:
    task = ShapesVQA(5, "heldout", 4)
    pairs = [Pair(TaskImage(task, i), task[i].question, f"task:{i}") for i in range(5)]
    records = [record(i, pair, embedded.token_grid(pair.image).grid) for i, pair in enumerate(pairs)]
    in_memory = list(encoded_pairs(embedded, pairs, records, 0.1, progress=False))
    stored = write_samples(encoded_pairs(embedded, pairs, records, 0.1, progress=False), tmp_path, chunk_size=2)
    assert len(stored) == len(in_memory) == 5
    for item, sample in zip(stored, in_memory):
        assert_same_sample(item, sample)
        assert torch.equal(item.target, teacher_top(sample.teacher[None], 0.1)[0])


def record(index: int, pair: Pair, grid: tuple[int, int]) -> TeacherRecord:
    generator = torch.Generator().manual_seed(index)
    return TeacherRecord(index, pair.source, pair.question, [1, 2], torch.rand(grid, generator=generator))


@pytest.mark.slow
def test_training_from_stored_samples_matches_training_in_memory(embedded, tmp_path) -> None:
    from arr_coc.training.loop import train_scorer

    task = ShapesVQA(12, "train", 6)
    pairs = [Pair(TaskImage(task, i), task[i].question, f"task:{i}") for i in range(12)]
    grids = [embedded.token_grid(pair.image).grid for pair in pairs]
    records = [record(i, pair, grid) for i, (pair, grid) in enumerate(zip(pairs, grids))]
    in_memory = list(encoded_pairs(embedded, pairs, records, 0.1, progress=False))
    stored = write_samples(encoded_pairs(embedded, pairs, records, 0.1, progress=False), tmp_path, chunk_size=5)
    config = train_config(
        {
            "steps": 6,
            "batch_size": 4,
            "explore_samples": 4,
            "methods": ["arr-coc", "uniform"],
            "heatmap_every": 3,
            "eval_every": 3,
            "stem_pixels_per_cell": 4,
            "teacher": "attention",
        }
    )
    hidden = embedded.vlm.hidden_size
    plain = train_scorer(config, in_memory[:9], in_memory[9:], hidden, progress=False)
    disk = train_scorer(config, stored[:9], stored[9:], hidden, progress=False)
    assert disk.losses == pytest.approx(plain.losses, rel=1e-4, abs=1e-6)
    assert flat_recall(disk.recall) == pytest.approx(flat_recall(plain.recall), abs=1e-6)
