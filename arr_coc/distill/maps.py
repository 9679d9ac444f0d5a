"""Teacher maps of a set of (image, question) pairs, computed in shards and stored small.

A shard ``K/N`` holds the pairs ``K, K + N, K + 2N, ...`` of the set, so N jobs
share the work with no coordination. A shard file (safetensors) keeps one
``[H', W']`` float16 teacher map per pair and, in its metadata, each pair's index,
source and question and the model's own answer; the images stay where they are
and training re-encodes them (a processor pass and an embedding lookup, no VLM
forward). :func:`load_teacher_maps` reads every shard of a folder and checks that
together they cover the set once. A :class:`Pair` may hold only where its image is
(:class:`ImageReader`), so every pass decodes it again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from arr_coc.distill.teachers import TeacherConfig, teacher_map
from arr_coc.errors import InvalidConfigError
from arr_coc.vlm.loading import LoadedVLM

SHARD_GLOB = "teacher-*-of-*.safetensors"


class ImageReader(Protocol):
    """An image kept as where to get it (a file, a synthetic draw); :meth:`read` decodes it anew each call."""

    def read(self) -> Image.Image: ...


@dataclass
class Pair:
    """One (image, question) to distil from; ``target [H', W']`` bool only where the task has labels.

    ``picture`` is the RGB image itself or an :class:`ImageReader`, which holds no pixels:
    ``image`` then decodes it on each access, so a large set of pairs stays small in memory.
    """

    picture: Image.Image | ImageReader
    question: str
    source: str
    target: torch.Tensor | None = None
    answer: str = ""
    kind: str = ""

    @property
    def image(self) -> Image.Image:
        """The RGB image (read anew from an :class:`ImageReader`)."""
        return self.picture if isinstance(self.picture, Image.Image) else self.picture.read()


@dataclass
class TeacherRecord:
    """One pair's stored teacher: ``teacher [H', W']`` float32 in [0, 1] and the all-token answer it explains."""

    index: int
    source: str
    question: str
    answer_ids: list[int]
    teacher: torch.Tensor


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with ``0 <= K < N``; :class:`InvalidConfigError` otherwise."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise InvalidConfigError(f"a shard is K/N with integers, e.g. 0/4; got {text!r}", field="shard") from None
    if not 0 <= k < n:
        raise InvalidConfigError(f"a shard K/N needs 0 <= K < N; got {text!r}", field="shard")
    return k, n


def shard_path(directory: str | Path, teacher: str, shard: tuple[int, int]) -> Path:
    return Path(directory) / f"teacher-{teacher}-{shard[0]}-of-{shard[1]}.safetensors"


def compute_shard(
    vlm: LoadedVLM, pairs: Sequence[Pair], shard: tuple[int, int], config: TeacherConfig, progress: bool = True
) -> list[TeacherRecord]:
    """The teacher of every pair in ``shard`` (one all-token answer plus one teacher pass each)."""
    k, n = shard
    indices = range(k, len(pairs), n)
    records = []
    for index in tqdm(indices, desc=f"teacher {config.teacher} {k}/{n}", disable=not progress, leave=False):
        pair = pairs[index]
        found = teacher_map(vlm, pair.image, pair.question, config)
        records.append(TeacherRecord(index, pair.source, pair.question, found.answer_ids, found.relevance))
    return records


def save_shard(records: Sequence[TeacherRecord], path: str | Path, config: TeacherConfig, total: int) -> Path:
    """``records`` into one safetensors file; ``total``: the size of the whole set."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"teacher.{r.index}": r.teacher.to(torch.float16).contiguous() for r in records}
    entries = [
        {"index": r.index, "source": r.source, "question": r.question, "answer_ids": r.answer_ids} for r in records
    ]
    metadata = {"teacher": config.model_dump_json(), "total": str(total), "pairs": json.dumps(entries)}
    save_file(tensors, str(path), metadata=metadata)
    return path


def load_teacher_maps(directory: str | Path, teacher: str, total: int) -> list[TeacherRecord]:
    """Every record of ``directory``'s ``teacher`` shards, in pair order.

    Raises :class:`InvalidConfigError` when no shard is there, when shards were made for a set of another
    size, or when together they miss or repeat a pair.
    """
    paths = sorted(Path(directory).glob(f"teacher-{teacher}-*-of-*.safetensors"))
    if not paths:
        raise InvalidConfigError(f"no {teacher} teacher shards in {directory}", field="maps")
    records: dict[int, TeacherRecord] = {}
    for path in paths:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if int(metadata.get("total", -1)) != total:
                raise InvalidConfigError(
                    f"{path.name} was computed for {metadata.get('total')} pairs, this set has {total}", field="maps"
                )
            for entry in json.loads(metadata["pairs"]):
                index = int(entry["index"])
                if index in records:
                    raise InvalidConfigError(f"pair {index} is in two shards of {directory}", field="maps")
                teacher_map_ = handle.get_tensor(f"teacher.{index}").float()
                records[index] = TeacherRecord(
                    index, entry["source"], entry["question"], list(entry["answer_ids"]), teacher_map_
                )
    missing = sorted(set(range(total)) - set(records))
    if missing:
        raise InvalidConfigError(
            f"the shards in {directory} miss {len(missing)} of {total} pairs (first: {missing[:5]}); "
            "compute the missing shards first",
            field="maps",
        )
    return [records[i] for i in range(total)]
