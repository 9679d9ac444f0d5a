"""Decode steps with a static KV cache, captured as one CUDA graph per batch bucket.

Eager decode with a growing cache is launch-bound on a GPU: every step is a few
hundred small kernels queued from Python. Here each ``(batch bucket, cache length)``
pair owns fixed buffers: a transformers ``StaticCache`` ``[Bb, heads, S, head_dim]``
per layer, the fed ids ``[Bb, 1]``, the 3-row positions ``[3, Bb, 1]`` and which
cache slots each row may attend ``[Bb, S]``. A step is a pure function of those
buffers (the causal frontier is the cache's own on-device length, so no Python
number changes between steps), which is what lets CUDA capture it once and replay
it. On CPU the same step runs eagerly (``static``): it checks the whole path
without a GPU and gives the same greedy ids as ``eager``.

A batch of ``B`` rows uses the smallest bucket ``Bb >= B``; rows ``B..Bb-1`` are
filler and never read. The prefill stays eager (its length varies per batch); its
KV is copied into the bucket's cache, left-padded rows keep their padding masked.
"""

from __future__ import annotations

import logging
import math
import threading
import warnings

import torch
from transformers import StaticCache

from arr_coc.vlm.loading import LoadedVLM
from arr_coc.vocabulary import DECODE_MODES

logger = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)
LENGTH_STEP = 256  # cache lengths: LENGTH_STEP * 2**n tokens


def resolve_decode(mode: str, device: torch.device) -> str:
    """``auto`` -> ``graph`` on CUDA, ``eager`` elsewhere; ``graph`` off CUDA -> ``static`` (with a warning)."""
    if mode not in DECODE_MODES:
        raise ValueError(f"unknown decode mode {mode!r}; use one of {', '.join(DECODE_MODES)}")
    if mode == "auto":
        return "graph" if device.type == "cuda" else "eager"
    if mode == "graph" and device.type != "cuda":
        warnings.warn("CUDA graphs need a CUDA device; decoding with a static cache, uncaptured", stacklevel=2)
        return "static"
    return mode


def batch_bucket(batch: int) -> int | None:
    """The smallest bucket that holds ``batch`` rows; ``None`` past the largest."""
    return next((bucket for bucket in BATCH_BUCKETS if bucket >= batch), None)


def length_bucket(tokens: int) -> int:
    """Cache length for ``tokens`` positions: ``LENGTH_STEP * 2**n >= tokens``."""
    return LENGTH_STEP * 2 ** max(0, math.ceil(math.log2(max(1, math.ceil(tokens / LENGTH_STEP)))))


def static_decode_supported(vlm: LoadedVLM) -> bool:
    """Every text layer attends over the full cache (no sliding window), so one mask serves all layers."""
    layer_types = getattr(vlm.model.config.text_config, "layer_types", None) or ()
    return all(kind == "full_attention" for kind in layer_types)


class StepBuffers:
    """Fixed buffers and the decode step of one ``(batch, length)`` bucket.

    ids ``[Bb, 1]``, positions ``[3, Bb, 1]``, attendable ``[Bb, S]`` (False on
    left padding), slots ``[S]``; ``cache`` holds ``[Bb, kv_heads, S, head_dim]``
    keys and values per layer. ``lock`` is held by the generation using them.
    """

    def __init__(self, vlm: LoadedVLM, batch: int, length: int) -> None:
        text = vlm.model.config.text_config
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.batch, self.length = batch, length
        self.cache = StaticCache(config=vlm.model.config, max_cache_len=length)
        self.cache.early_initialization(batch, text.num_key_value_heads, head_dim, vlm.dtype, vlm.device)
        self.ids = torch.zeros((batch, 1), dtype=torch.long, device=vlm.device)
        self.positions = torch.zeros((3, batch, 1), dtype=torch.long, device=vlm.device)
        self.attendable = torch.ones((batch, length), dtype=torch.bool, device=vlm.device)
        self.slots = torch.arange(length, device=vlm.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_logits: torch.Tensor | None = None
        self.lock = threading.Lock()

    def step(self, model) -> torch.Tensor:
        """One decode step from the buffers; advances the cache and the positions. Logits ``[Bb, V]``."""
        frontier = self.cache.layers[0].cumulative_length  # the slot this step writes, on the device
        mask = self.attendable & (self.slots <= frontier)  # [Bb, S]
        output = model(
            input_ids=self.ids,
            position_ids=self.positions,
            attention_mask=mask[:, None, None, :],
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.positions.add_(1)
        return output.logits[:, -1]

    def run(self, model) -> torch.Tensor:
        """Replay the captured step when there is one, else run it eagerly."""
        if self.graph is None:
            return self.step(model)
        self.graph.replay()
        return self.graph_logits

    def load(self, prefill_cache, attention_mask: torch.Tensor, next_positions: torch.Tensor) -> None:
        """Copy a prefill's KV ``[B, kv_heads, L, head_dim]`` per layer in; mask ``[B, L]``; positions ``[B]``."""
        rows, length = attention_mask.shape
        for static, prefilled in zip(self.cache.layers, prefill_cache.layers):
            static.keys[:rows, :, :length].copy_(prefilled.keys)
            static.values[:rows, :, :length].copy_(prefilled.values)
            static.cumulative_length.fill_(length)
        self.attendable.fill_(True)
        self.attendable[:rows, :length].copy_(attention_mask.bool())
        self.positions.zero_()
        self.positions[:, :rows, 0] = next_positions.view(1, -1)

    def capture(self, model, pool) -> None:
        """Record the step as a CUDA graph (after two warm-up steps on a side stream); buffers reset after.

        The graph writes its logits into a buffer of this bucket's own, outside the
        graph pool the buckets share, so replaying another bucket cannot overwrite them.
        """
        side = torch.cuda.Stream(device=self.ids.device)
        side.wait_stream(torch.cuda.current_stream(self.ids.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                warm = self.step(model)
        torch.cuda.current_stream(self.ids.device).wait_stream(side)
        logits = torch.empty_like(warm)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            logits.copy_(self.step(model))
        self.graph, self.graph_logits = graph, logits
        for layer in self.cache.layers:
            layer.cumulative_length.zero_()
        self.positions.zero_()


class StaticDecoder:
    """The buckets of one loaded VLM, created (and on CUDA captured) on first use or at warm-up.

    A failed capture is logged and the decoder goes on without graphs, never failing a request.
    """

    def __init__(self, vlm: LoadedVLM, graphs: bool) -> None:
        self.vlm = vlm
        self.graphs = graphs and vlm.device.type == "cuda"
        self._buckets: dict[tuple[int, int], StepBuffers] = {}
        self._guard = threading.Lock()
        self._pool = torch.cuda.graph_pool_handle() if self.graphs else None

    @property
    def buckets(self) -> list[tuple[int, int]]:
        """``(batch, length)`` of every bucket made so far."""
        return sorted(self._buckets)

    def captured(self, batch: int, length: int) -> bool:
        buffers = self._buckets.get((batch, length))
        return buffers is not None and buffers.graph is not None

    def buffers(self, rows: int, tokens: int) -> StepBuffers | None:
        """The bucket for ``rows`` rows and ``tokens`` cache positions, or ``None`` past the largest batch."""
        batch = batch_bucket(rows)
        if batch is None:
            return None
        key = (batch, length_bucket(tokens))
        with self._guard:
            if key not in self._buckets:
                with torch.inference_mode(False):  # plain tensors: usable in and out of inference mode
                    buffers = StepBuffers(self.vlm, *key)
                if self.graphs:
                    self._capture(buffers)
                self._buckets[key] = buffers
            return self._buckets[key]

    def _capture(self, buffers: StepBuffers) -> None:
        try:
            with torch.no_grad():
                buffers.capture(self.vlm.model, self._pool)
        except Exception as error:  # noqa: BLE001 - any capture failure means: decode uncaptured
            logger.warning("CUDA graph capture of the decode step failed (%s); decoding without graphs", error)
            self.graphs = False
            buffers.graph = buffers.graph_logits = None
            for layer in buffers.cache.layers:
                layer.cumulative_length.zero_()

    def warm_up(self, batches: tuple[int, ...], tokens: int) -> None:
        """Make (and capture) the buckets of ``batches`` rows at ``tokens`` cache positions."""
        for rows in batches:
            self.buffers(rows, tokens)
