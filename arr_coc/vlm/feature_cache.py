"""Vision-tower outputs and texture cells by image content, so a second question about an image skips both.

Many questions about one image are the common case (a user explores a picture).
:class:`FeatureCache` maps the BLAKE2b digest of an image's decoded pixels (mode,
size and bytes) to what the pipeline computed from it: the merger features of
every token (``[N, D]``, and Qwen3-VL's DeepStack ``[N, D]`` per layer) and the
scorer's texture cells (``[13, H', W']``). It is an LRU bounded in bytes; a size of
0 turns it off. Thread-safe: runner threads may share one pipeline.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch
from PIL import Image

from arr_coc.vlm.pruning import VisionFeatures


def image_key(image: Image.Image) -> str:
    """Digest of an image's content: equal for equal pixels, whatever file they came from."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


@dataclass
class CachedImage:
    """What one image gave: all tokens' tower features (``None`` until a ``post`` request ran the tower on it)
    and its texture cells ``[13, H', W']`` (``None`` until scored)."""

    features: VisionFeatures | None = None
    texture: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        tensors = [self.texture]
        if self.features is not None:
            tensors += [self.features.features, *(self.features.deepstack or [])]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


class FeatureCache:
    """LRU of :class:`CachedImage` by :func:`image_key`, at most ``max_bytes`` of tensors."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, CachedImage] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, count: bool = True) -> CachedImage:
        """The entry of ``key`` (a copy of its references; empty when absent).

        With ``count``, a lookup that finds tower features is a hit, any other a miss.
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            if count and entry is not None and entry.features is not None:
                self.hits += 1
            elif count:
                self.misses += 1
            return CachedImage(entry.features, entry.texture) if entry is not None else CachedImage()

    def put(self, key: str, features: VisionFeatures | None = None, texture: torch.Tensor | None = None) -> None:
        """Store (or complete) the entry of ``key``, then evict least recently used entries over the bound."""
        if not self.enabled:
            return
        with self._lock:
            entry = self._entries.pop(key, None) or CachedImage()
            self._bytes -= entry.nbytes
            if features is not None:
                entry.features = VisionFeatures(
                    features.features.detach(),
                    None if features.deepstack is None else [d.detach() for d in features.deepstack],
                )
            if texture is not None:
                entry.texture = texture.detach()
            if entry.nbytes > self.max_bytes:
                return
            self._entries[key] = entry
            self._bytes += entry.nbytes
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
