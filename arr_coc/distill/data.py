"""The pairs a scorer is distilled from, and their encoding for training.

:func:`distill_pairs` gathers (image, question) pairs from the user's files or the
synthetic task; no pair holds decoded pixels (a user's image is re-read from its file,
a synthetic scene re-drawn from its seed, whenever it is used). :func:`encoded_pairs`
turns pairs and their teacher maps, one at a time, into the
:class:`~arr_coc.training.data.CachedSample` s the training loop reads: the
processor's resized image ``[3, H, W]``, the query embedding ``[D]``, the teacher
``[H', W']`` and as ``target`` the task's mask where there are labels, else the
teacher's top tokens (``teacher_top`` of them); :mod:`arr_coc.distill.store` keeps
them on disk.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from arr_coc.distill.config import DistillConfig
from arr_coc.distill.maps import Pair, TeacherRecord
from arr_coc.errors import InvalidConfigError
from arr_coc.synthetic import Dataset
from arr_coc.tasks import load_dataset
from arr_coc.tasks.image_questions import (
    DEFAULT_PROMPT,
    ImageFileQuestion,
    ImageQuestion,
    find_images,
    has_chat_template,
    load_question_file,
    self_questions,
    template_questions,
)
from arr_coc.training.data import CachedSample, processor_grid, question_token_embeddings
from arr_coc.training.loss import teacher_top
from arr_coc.vlm.grid import merged_grid, resized_image
from arr_coc.vlm.inputs import prepare_image
from arr_coc.vlm.pipeline import VLMPipeline
from arr_coc.vlm.testbed import EMBEDDED_MODEL


def is_embedded(pipeline: VLMPipeline) -> bool:
    """The embedded testbed, which answers the synthetic task's templates and cannot write questions."""
    return Path(pipeline.vlm.source).resolve() == EMBEDDED_MODEL.resolve()


@dataclass(frozen=True)
class TaskImage:
    """Sample ``index``'s image of a synthetic dataset, drawn anew on each :meth:`read` (draws are deterministic)."""

    dataset: Dataset
    index: int

    def read(self) -> Image.Image:
        return self.dataset[self.index].image


def distill_pairs(config: DistillConfig, pipeline: VLMPipeline) -> tuple[list[Pair], dict[str, int]]:
    """The run's pairs in a fixed order (every shard job must see the same list) and the skip counts.

    No pair keeps decoded pixels: each holds a :class:`TaskImage` or an
    :class:`~arr_coc.tasks.image_questions.ImageFile` (user images are decoded once here to
    count the unreadable ones).
    """
    if not config.user_data:
        return task_pairs(config, pipeline), {}
    if config.questions:
        found = load_question_file(config.questions, lazy=True)
    else:
        images, skipped = find_images(config.images)
        if config.self_questions:
            found = self_questions(pipeline, images, config.self_questions, config.question_prompt or DEFAULT_PROMPT)
        elif is_embedded(pipeline) or not has_chat_template(pipeline.vlm.processor):
            found = template_questions(images, seed=config.seed)
        else:
            raise InvalidConfigError(
                "images without questions: pass self_questions N (the VLM writes N per image) or a questions file",
                field="self_questions",
            )
        found.skipped = {k: found.skipped.get(k, 0) + skipped.get(k, 0) for k in {*found.skipped, *skipped}}
    pairs = [Pair(_picture(q), q.question, q.source) for q in found.samples]
    return pairs, dict(found.skipped)


def task_pairs(config: DistillConfig, pipeline: VLMPipeline) -> list[Pair]:
    """The synthetic task's training pairs with their labels; each image is drawn here and dropped."""
    grid_for = processor_grid(pipeline.vlm.processor)
    dataset = load_dataset(config.dataset, "train", config.train_size, seed=config.seed, grid_for=grid_for)
    pairs = []
    for i in range(len(dataset)):
        s = dataset[i]
        source = f"{config.dataset}:train:{config.seed}:{i}"
        pairs.append(Pair(TaskImage(dataset, i), s.question, source, s.target_mask, s.answer, s.kind))
    return pairs


def _picture(question: ImageQuestion | ImageFileQuestion):
    return question.file if isinstance(question, ImageFileQuestion) else question.image


def encoded_pairs(
    pipeline: VLMPipeline,
    pairs: Sequence[Pair],
    records: Sequence[TeacherRecord | None],
    top_share: float,
    progress: bool = True,
    desc: str = "encode",
) -> Iterator[CachedSample]:
    """One :class:`CachedSample` per pair, one at a time: a processor pass and an embedding lookup (no VLM forward).

    ``records[i]`` is pair ``i``'s teacher (``None``: the pair trains on its labels, ``teacher`` unset).
    Raises :class:`InvalidConfigError` when a record was made for another question or another grid.
    """
    for pair, record in tqdm(zip(pairs, records), total=len(pairs), desc=desc, disable=not progress, leave=False):
        yield encode_pair(pipeline, pair, record, top_share)


@torch.no_grad()
def encode_pair(pipeline: VLMPipeline, pair: Pair, record: TeacherRecord | None, top_share: float) -> CachedSample:
    """``pair`` as the scorer sees it: image ``[3, H, W]``, query ``[D]``, target and teacher ``[H', W']``."""
    image_processor = pipeline.vlm.processor.image_processor
    batch = image_processor(images=[prepare_image(image_processor, pair.image)], return_tensors="pt")
    thw = batch["image_grid_thw"][0]
    grid = merged_grid(thw, int(image_processor.merge_size))
    teacher = None
    if record is not None:
        if record.question != pair.question or tuple(record.teacher.shape) != grid:
            raise InvalidConfigError(
                f"the teacher map of pair {record.index} is for {record.question!r} on a "
                f"{tuple(record.teacher.shape)} grid, the pair is {pair.question!r} on {grid}",
                field="maps",
            )
        teacher = record.teacher
    target = pair.target
    if target is None:
        if teacher is None:
            raise InvalidConfigError(f"pair {pair.source} has neither labels nor a teacher map", field="maps")
        target = teacher_top(teacher[None], top_share)[0]
    question_tokens = question_token_embeddings(pipeline, pair.question)  # [Q, D]
    return CachedSample(
        image=resized_image(batch["pixel_values"], thw, image_processor),
        grid=grid,
        query=question_tokens.mean(dim=0).cpu(),
        target=target.bool(),
        features=None,
        question=pair.question,
        answer=pair.answer,
        kind=pair.kind,
        teacher=teacher,
    )
