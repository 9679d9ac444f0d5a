"""What training needs of the frozen VLM, computed once per sample.

The scorer trains against the VLM's view of each image, but the VLM itself never
runs in the training loop: :func:`encode_dataset` runs the processor once per
sample and keeps the resized image ``[3, H, W]``, the token grid ``(H', W')``,
the query embedding ``[D]`` and the target mask ``[H', W']``; for the held-out
split also the merger features ``[N, D]`` that ``divprune`` and ``cdpruner``
select on, and the question's token embeddings ``[Q, D]`` that ``cdpruner``
scores relevance with.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from arr_coc.errors import EmptyDatasetError, InvalidConfigError, InvalidGridError
from arr_coc.synthetic import Dataset, GridFn
from arr_coc.vlm.grid import merged_grid, resized_image
from arr_coc.vlm.inputs import prepare_image, resized_size
from arr_coc.vlm.pipeline import VLMPipeline
from arr_coc.vlm.pruning import encode_images


@dataclass
class CachedSample:
    """One sample as the scorer sees it.

    image: ``[3, H, W]`` float in [0, 1], the processor's resized image.
    grid: ``(H', W')`` visual tokens.
    query: ``[D]`` float32 question embedding.
    target: ``[H', W']`` bool mask of the object the question is about.
    features: ``[N, D]`` merger outputs, or ``None`` when not encoded.
    question_tokens: ``[Q, D]`` float32 input embeddings of the question's tokens
        (``query`` is their mean), or ``None`` when not encoded (with ``features``).
    teacher: ``[H', W']`` float32 in [0, 1], the VLM's own relevance of each token
        (:mod:`arr_coc.distill.teachers`), or ``None`` when the scorer learns from ``target``.
        Samples without labels set ``target`` to the teacher's top tokens.
    """

    image: torch.Tensor
    grid: tuple[int, int]
    query: torch.Tensor
    target: torch.Tensor
    features: torch.Tensor | None
    question: str
    answer: str
    kind: str
    question_tokens: torch.Tensor | None = None
    teacher: torch.Tensor | None = None


def processor_grid(processor) -> GridFn:
    """``grid_for(width, height)``: the merged token grid the VLM's processor gives that image."""
    image_processor = processor.image_processor
    factor = int(image_processor.patch_size) * int(image_processor.merge_size)

    def grid_for(width: int, height: int) -> tuple[int, int]:
        resized_h, resized_w = resized_size(image_processor, width, height)
        return resized_h // factor, resized_w // factor

    return grid_for


@torch.no_grad()
def question_token_embeddings(pipeline: VLMPipeline, question: str) -> torch.Tensor:
    """``[Q, D]`` float32, on the VLM's device: the VLM's input embeddings of the question's tokens.

    Tokenized as :meth:`VLMPipeline.question_embedding` does, whose result is their mean.
    """
    vlm = pipeline.vlm
    ids = vlm.tokenizer(question, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    return vlm.model.get_input_embeddings()(ids.to(vlm.device)).float()


@torch.no_grad()
def encode_sample(pipeline: VLMPipeline, sample, with_features: bool) -> CachedSample:
    """One processor pass (plus one vision pass ``with_features``) for one dataset sample."""
    vlm = pipeline.vlm
    image_processor = vlm.processor.image_processor
    batch = image_processor(images=[prepare_image(image_processor, sample.image)], return_tensors="pt")
    thw = batch["image_grid_thw"][0]
    grid = merged_grid(thw, int(image_processor.merge_size))
    if tuple(sample.target_mask.shape) != grid:
        raise InvalidGridError(
            f"the dataset's target mask is {tuple(sample.target_mask.shape)} but the VLM's grid is {grid}",
            field="target_mask",
        )
    features = None
    if with_features:
        features = encode_images(vlm, [batch["pixel_values"]], [thw])[0].features.float().cpu()
    question_tokens = question_token_embeddings(pipeline, sample.question)  # [Q, D]
    return CachedSample(
        image=resized_image(batch["pixel_values"], thw, image_processor),
        grid=grid,
        query=question_tokens.mean(dim=0).cpu(),
        target=sample.target_mask.bool(),
        features=features,
        question=sample.question,
        answer=sample.answer,
        kind=sample.kind,
        question_tokens=question_tokens.cpu() if with_features else None,
    )


def encoded_samples(
    pipeline: VLMPipeline, dataset: Dataset, *, with_features: bool = False, desc: str = "encode", progress: bool = True
) -> Iterator[CachedSample]:
    """Every sample of ``dataset`` through :func:`encode_sample`, one at a time, with a tqdm bar."""
    if len(dataset) == 0:
        raise EmptyDatasetError("the dataset has no samples", field="dataset")
    for i in tqdm(range(len(dataset)), desc=desc, disable=not progress, leave=False):
        yield encode_sample(pipeline, dataset[i], with_features)


def encode_dataset(
    pipeline: VLMPipeline, dataset: Dataset, *, with_features: bool = False, desc: str = "encode", progress: bool = True
) -> list[CachedSample]:
    """Every sample of ``dataset`` through :func:`encode_sample`, with a tqdm bar."""
    return list(encoded_samples(pipeline, dataset, with_features=with_features, desc=desc, progress=progress))


def batches(samples: Sequence[CachedSample], batch_size: int, seed: int) -> Iterator[list[CachedSample]]:
    """Endless shuffled batches of ``batch_size`` samples (any image sizes; see :func:`size_groups`).

    Each pass shuffles the samples' indices with ``random.Random(seed + pass)``; the last
    short batch of a pass is used too. Only a batch's samples are indexed at a time, so a
    disk-backed ``samples`` is read one batch at a time.
    """
    epoch = 0
    while True:
        order = list(range(len(samples)))
        random.Random(seed + epoch).shuffle(order)
        for start in range(0, len(order), batch_size):
            yield [samples[i] for i in order[start : start + batch_size]]
        epoch += 1


def size_groups(batch: Sequence[CachedSample]) -> list[list[CachedSample]]:
    """``batch`` split into groups of one image size (each group stacks), in first-seen order."""
    groups: dict[tuple[int, ...], list[CachedSample]] = defaultdict(list)
    for sample in batch:
        groups[tuple(sample.image.shape)].append(sample)
    return list(groups.values())


def stack_teachers(batch: Sequence[CachedSample]) -> torch.Tensor:
    """``[B, H', W']`` teacher maps of a same-size batch; :class:`InvalidConfigError` if one has none."""
    if any(s.teacher is None for s in batch):
        raise InvalidConfigError("a sample has no teacher map; distil from teacher maps", field="teacher")
    return torch.stack([s.teacher for s in batch])


def stack(batch: Sequence[CachedSample]) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor, torch.Tensor]:
    """``images [B, 3, H, W]``, ``grid``, ``queries [B, D]``, ``targets [B, H', W']`` of a same-size batch."""
    images = torch.stack([s.image for s in batch])
    queries = torch.stack([s.query for s in batch])
    targets = torch.stack([s.target for s in batch])
    return images, batch[0].grid, queries, targets
