"""A persistent static KV cache whose rows requests join and leave between decode steps.

The step scheduler (:mod:`arr_coc.vlm.scheduler`) keeps one of these for the life
of the server: ``rows`` request rows of ``length`` slots each, keys and values
``[rows, kv_heads, length, head_dim]`` per layer. Unlike transformers'
``StaticCache`` (one write index for the whole batch), every row has its own:

- ``write_at [rows]`` the slot each row writes next (its prompt fills ``[0, L)``),
- ``ids [rows, 1]`` the tokens fed, ``positions [3, rows, 1]`` each row's own next
  M-RoPE position (rows continue from their own pruned prompts).

A row reads the slots ``[0, write_at]``, so a decode step is a pure function of
fixed buffers (no Python number changes between steps) and CUDA can capture it.
Running rows are packed at the front (a finished row's place is taken by the last
running row), so a step runs the smallest bucket of rows that holds them; rows of
the bucket past the running ones are filler and never read. A step also attends
over only the first ``span`` slots, the smallest length bucket (256 x 2^n) that
holds its longest row, so short rows do not pay for the whole cache; one graph is
captured per (rows, span) pair.
"""

from __future__ import annotations

import logging

import torch
from transformers import StaticCache
from transformers.cache_utils import StaticLayer

from arr_coc.vlm.loading import LoadedVLM
from arr_coc.vlm.static_decoding import BATCH_BUCKETS, length_bucket

logger = logging.getLogger(__name__)


def row_buckets(rows: int) -> tuple[int, ...]:
    """The batch sizes a step runs at: the static buckets below ``rows``, and ``rows`` itself."""
    return tuple(sorted({b for b in BATCH_BUCKETS if b < rows} | {rows}))


class RowSlotLayer(StaticLayer):
    """One layer's keys and values; a step of ``B`` rows writes row ``b``'s new entry at slot ``write_at[b]``.

    ``span``: how many slots the step attends over (set before each step).
    """

    def __init__(self, max_cache_len: int, write_at: torch.Tensor) -> None:
        super().__init__(max_cache_len=max_cache_len)
        self.write_at = write_at
        self.span = max_cache_len

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """``key_states [B, kv_heads, 1, head_dim]`` -> keys and values ``[B, kv_heads, span, head_dim]``."""
        batch, heads, _, dim = key_states.shape
        slots = self.write_at[:batch].view(batch, 1, 1, 1).expand(batch, heads, 1, dim)
        keys, values = self.keys[:batch, :, : self.span], self.values[:batch, :, : self.span]
        keys.scatter_(2, slots, key_states)
        values.scatter_(2, slots, value_states.to(values.dtype))
        return keys, values


class SlotCache:
    """The scheduler's KV storage and its decode step (see the module docstring).

    ``lengths[r]`` is the host's copy of ``write_at[r]``: the slots row ``r`` holds.
    """

    def __init__(self, vlm: LoadedVLM, rows: int, length: int, graphs: bool = False) -> None:
        text = vlm.model.config.text_config
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.vlm, self.rows, self.length = vlm, rows, length
        self.buckets = row_buckets(rows)
        with torch.inference_mode(False):  # plain tensors, usable in and out of inference mode
            self.write_at = torch.zeros(rows, dtype=torch.long, device=vlm.device)
            self.cache = StaticCache(config=vlm.model.config, max_cache_len=length)
            self.cache.layers = [RowSlotLayer(length, self.write_at) for _ in self.cache.layers]
            self.cache.early_initialization(rows, text.num_key_value_heads, head_dim, vlm.dtype, vlm.device)
            self.ids = torch.zeros((rows, 1), dtype=torch.long, device=vlm.device)
            self.positions = torch.zeros((3, rows, 1), dtype=torch.long, device=vlm.device)
            self.slots = torch.arange(length, device=vlm.device)
        self.lengths = [0] * rows
        self.graphs = graphs and vlm.device.type == "cuda"
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.graphs else None

    @property
    def bytes(self) -> int:
        """Memory of the keys and values."""
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in self.cache.layers)

    def bucket(self, running: int) -> int:
        """The batch a step over ``running`` packed rows runs at."""
        return next(b for b in self.buckets if b >= running)

    def span(self, running: int) -> int:
        """The slots a step over ``running`` packed rows attends over: a length bucket holding the longest."""
        return min(self.length, length_bucket(max(self.lengths[:running]) + 1))

    @property
    def spans(self) -> list[int]:
        """Every span a step may use."""
        spans, span = [], length_bucket(1)
        while span < self.length:
            spans.append(span)
            span *= 2
        return [*spans, self.length]

    # --- the step -------------------------------------------------------------------------

    def _step(self, batch: int, span: int) -> torch.Tensor:
        """One decode step of rows ``[0, batch)`` over slots ``[0, span)`` from the buffers. Logits ``[batch, V]``."""
        for layer in self.cache.layers:
            layer.span = span
        mask = self.slots[:span] <= self.write_at[:batch, None]  # [batch, span]: its slots and the one it writes
        output = self.vlm.model(
            input_ids=self.ids[:batch],
            position_ids=self.positions[:, :batch],
            attention_mask=mask[:, None, None, :],
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.write_at[:batch].add_(1).clamp_(max=self.length - 1)  # filler rows stay in range
        self.positions[:, :batch].add_(1)
        return output.logits[:, -1]

    def step(self, tokens: list[int]) -> torch.Tensor:
        """Feed ``tokens`` (one per packed running row) and advance each of those rows one slot. Logits ``[R, V]``.

        Raises :class:`CacheFullError` when a running row has no slot left (the scheduler never lets that happen).
        """
        running = len(tokens)
        if any(self.lengths[row] >= self.length for row in range(running)):
            raise CacheFullError(f"a running row has used all {self.length} slots")
        batch, span = self.bucket(running), self.span(running)
        self.ids[:running, 0].copy_(torch.tensor(tokens, dtype=torch.long), non_blocking=True)
        self.write_at[running:batch].zero_()  # filler rows write inside the span
        if self.graphs and (batch, span) not in self._graphs:
            self._capture(batch, span)
        if (batch, span) in self._graphs:
            graph, logits = self._graphs[batch, span]
            graph.replay()
        else:
            logits = self._step(batch, span)
        for row in range(running):
            self.lengths[row] += 1
        return logits[:running]

    def _capture(self, batch: int, span: int) -> None:
        """Record the step of ``batch`` rows over ``span`` slots as a CUDA graph; write slots and positions restored after.

        The warm-up and captured steps write slots no row reads yet (they are rewritten
        before they are read). A failed capture turns graphs off.
        """
        saved_write_at, saved_positions = self.write_at.clone(), self.positions.clone()
        try:
            device = self.ids.device
            side = torch.cuda.Stream(device=device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    self.write_at.copy_(saved_write_at.clamp(max=span - 1))
                    warm = self._step(batch, span)
            torch.cuda.current_stream(device).wait_stream(side)
            self.write_at.copy_(saved_write_at.clamp(max=span - 1))
            logits = torch.empty_like(warm)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                logits.copy_(self._step(batch, span))
            self._graphs[batch, span] = (graph, logits)
        except Exception as error:  # noqa: BLE001 - any capture failure means: decode uncaptured
            logger.warning(
                "capturing the %d-row, %d-slot step failed (%s); decoding without graphs", batch, span, error
            )
            self.graphs = False
        finally:
            self.write_at.copy_(saved_write_at)
            self.positions.copy_(saved_positions)

    def warm_up(self) -> None:
        """Capture every bucket's step now (CUDA graphs), so no request pays for a capture.

        Only while no row runs: the capture's steps write past each row's last slot.
        """
        for batch in self.buckets:
            for span in self.spans:
                if self.graphs and (batch, span) not in self._graphs:
                    self._capture(batch, span)

    # --- rows joining and leaving ---------------------------------------------------------------

    def load(self, row: int, prefill_cache, batch_row: int, length: int, next_positions: torch.Tensor) -> None:
        """Put row ``batch_row`` of a left-padded prefill into cache row ``row``.

        Its last ``length`` positions (the prompt without padding) go to slots ``[0, length)``;
        ``next_positions`` (a scalar, or ``[3]``) is the position of its first generated token.
        """
        if length >= self.length:
            raise CacheFullError(f"a {length}-token prompt leaves no slot to decode in ({self.length} slots)")
        for layer, prefilled in zip(self.cache.layers, prefill_cache.layers):
            layer.keys[row, :, :length].copy_(prefilled.keys[batch_row, :, -length:])
            layer.values[row, :, :length].copy_(prefilled.values[batch_row, :, -length:])
        self.write_at[row] = length
        self.positions[:, row, 0] = next_positions
        self.lengths[row] = length

    def move(self, source: int, target: int) -> None:
        """Copy row ``source`` over row ``target`` (packing the running rows after one leaves)."""
        if source == target:
            return
        used = self.lengths[source]
        for layer in self.cache.layers:
            layer.keys[target, :, :used].copy_(layer.keys[source, :, :used])
            layer.values[target, :, :used].copy_(layer.values[source, :, :used])
        self.write_at[target] = self.write_at[source]
        self.positions[:, target].copy_(self.positions[:, source])
        self.lengths[target] = used


class CacheFullError(RuntimeError):
    """A row has no slot left (a scheduler bug, never a request's fault)."""
