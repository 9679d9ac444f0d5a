"""Encoded samples on disk, read back as they are used.

:func:`write_samples` streams :class:`~arr_coc.training.data.CachedSample` s into
safetensors files of ``chunk_size`` samples in a folder and returns a
:class:`StoredSamples`: a ``Sequence`` the training loop reads as it reads a list
(``len``, an index, a slice, iteration). Its items (:class:`StoredSample`) hold the
strings and the grid; each tensor is read from its chunk file when the item's attribute
is read, and only the last ``recent`` tensors read stay in memory, so RAM holds a few
batches whatever the number of samples. A chunk file is opened for each read and closed
again (no mapping is left open).

Stored dtypes: the image ``[3, H, W]`` as uint8 (``round(255 x)``), read back as float32
``/ 255``. The Qwen-VL image processors resize the uint8 picture before rescaling, so the
resized image already lies on the 1/255 grid and uint8 gives it back within float32
rounding (about 1e-7) at a quarter of float32's bytes; a processor that resized in
float would lose at most 1/510 per pixel. The query ``[D]``, teacher ``[H', W']``,
features ``[N, D]`` and question tokens ``[Q, D]`` stay float32, the target ``[H', W']``
bool.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from arr_coc.training.data import CachedSample

CHUNK_SIZE = 64
RECENT_TENSORS = 64
OPTIONAL_TENSORS = ("teacher", "features", "question_tokens")


@dataclass(frozen=True)
class SampleEntry:
    """Where one sample's tensors are (``chunk`` file, keys ``<key>.<name>``) and its non-tensor fields."""

    chunk: Path
    key: str
    grid: tuple[int, int]
    question: str
    answer: str
    kind: str
    tensors: frozenset[str]


class StoredSample:
    """One stored sample with :class:`CachedSample`'s attributes; its tensors are read from disk on each access."""

    def __init__(self, store: StoredSamples, entry: SampleEntry) -> None:
        self._store = store
        self._entry = entry
        self.grid = entry.grid
        self.question = entry.question
        self.answer = entry.answer
        self.kind = entry.kind

    @property
    def image(self) -> torch.Tensor:
        """``[3, H, W]`` float32 in [0, 1]."""
        return self._store.read(self._entry, "image").float().div_(255.0)

    @property
    def query(self) -> torch.Tensor:
        """``[D]`` float32."""
        return self._store.read(self._entry, "query")

    @property
    def target(self) -> torch.Tensor:
        """``[H', W']`` bool."""
        return self._store.read(self._entry, "target")

    @property
    def teacher(self) -> torch.Tensor | None:
        """``[H', W']`` float32, or ``None``."""
        return self._store.read(self._entry, "teacher")

    @property
    def features(self) -> torch.Tensor | None:
        """``[N, D]`` float32, or ``None``."""
        return self._store.read(self._entry, "features")

    @property
    def question_tokens(self) -> torch.Tensor | None:
        """``[Q, D]`` float32, or ``None``."""
        return self._store.read(self._entry, "question_tokens")

    def loaded(self) -> CachedSample:
        """This sample read whole into memory."""
        return CachedSample(
            image=self.image,
            grid=self.grid,
            query=self.query,
            target=self.target,
            features=self.features,
            question=self.question,
            answer=self.answer,
            kind=self.kind,
            question_tokens=self.question_tokens,
            teacher=self.teacher,
        )


class RecentTensors:
    """Tensors read from chunk files, each file opened for the read; the last ``limit`` read stay in memory."""

    def __init__(self, limit: int = RECENT_TENSORS) -> None:
        self.limit = limit
        self._kept: OrderedDict[tuple[Path, str], torch.Tensor] = OrderedDict()

    def get(self, chunk: Path, key: str) -> torch.Tensor:
        tensor = self._kept.pop((chunk, key), None)
        if tensor is None:
            with safe_open(str(chunk), framework="pt") as handle:
                tensor = handle.get_tensor(key)
        self._kept[(chunk, key)] = tensor
        while len(self._kept) > self.limit:
            self._kept.popitem(last=False)
        return tensor


class StoredSamples(Sequence[StoredSample]):
    """Samples written by :func:`write_samples`; a slice is another :class:`StoredSamples` sharing ``tensors``."""

    def __init__(self, entries: Sequence[SampleEntry], tensors: RecentTensors | None = None) -> None:
        self._entries = list(entries)
        self._tensors = tensors or RecentTensors()

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int | slice) -> StoredSample | StoredSamples:
        if isinstance(index, slice):
            return StoredSamples(self._entries[index], self._tensors)
        return StoredSample(self, self._entries[index])

    def read(self, entry: SampleEntry, name: str) -> torch.Tensor | None:
        """Tensor ``name`` of ``entry`` as stored (the image uint8), or ``None`` when the sample has none."""
        if name not in entry.tensors:
            return None
        return self._tensors.get(entry.chunk, f"{entry.key}.{name}")


def sample_tensors(sample: CachedSample, key: str) -> dict[str, torch.Tensor]:
    """``sample``'s tensors under ``<key>.<name>`` as stored: the image uint8, the others as the module describes."""
    tensors = {
        "image": (sample.image.detach().cpu().float().clamp(0, 1) * 255).round().to(torch.uint8),
        "query": sample.query.detach().cpu().float(),
        "target": sample.target.detach().cpu().bool(),
    }
    for name in OPTIONAL_TENSORS:
        value = getattr(sample, name)
        if value is not None:
            tensors[name] = value.detach().cpu().float()
    return {f"{key}.{name}": tensor.contiguous() for name, tensor in tensors.items()}


def write_samples(
    samples: Iterable[CachedSample], folder: str | Path, chunk_size: int = CHUNK_SIZE, recent: int = RECENT_TENSORS
) -> StoredSamples:
    """``samples`` written to ``folder`` as ``samples-NNNNN.safetensors`` files of ``chunk_size`` samples each.

    Only one chunk is held in memory while writing; ``samples`` may be a generator.
    Returns the :class:`StoredSamples` that reads them back in order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries: list[SampleEntry] = []
    pending: dict[str, torch.Tensor] = {}
    for number, sample in enumerate(samples):
        chunk = folder / f"samples-{number // chunk_size:05d}.safetensors"
        tensors = sample_tensors(sample, str(number))
        pending.update(tensors)
        names = frozenset(name.split(".", 1)[1] for name in tensors)
        entries.append(
            SampleEntry(chunk, str(number), tuple(sample.grid), sample.question, sample.answer, sample.kind, names)
        )
        if (number + 1) % chunk_size == 0:
            save_file(pending, str(chunk))
            pending = {}
    if pending:
        save_file(pending, str(entries[-1].chunk))
    return StoredSamples(entries, RecentTensors(recent))
