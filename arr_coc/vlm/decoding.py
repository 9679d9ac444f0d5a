"""Prefill and cached decode of pruned rows, batched.

Rows of different lengths are left-padded into one ``[B, L]`` batch with an
attention mask; position ids are given explicitly as ``[3, B, L]`` (the stock
M-RoPE ids of each row's kept tokens), so the model never recomputes positions
from the pruned sequence (which would renumber the kept tokens). Generated
token ``t`` (0-based) of a row gets position ``last + 1 + t`` on all three rows,
``last`` being the position of the row's final prompt token: the same ids the
stock model uses for its decode steps.

Why this project owns its decode loop instead of calling ``model.generate``: one
batch here mixes rows that ``generate`` would need separate calls for, namely
(1) per-row sampling settings and seeds (greedy beside seeded top-p rows, each
reproducible alone), (2) explicit 3-row M-RoPE positions of pruned rows that must
continue from each row's own last position, and (3) streaming with stop strings
that end one row while the others go on. ``generate`` takes one
``GenerationConfig`` and one ``Generator`` per call and derives decode positions
itself. Moving to it would take a logits processor that draws per-row seeded
samples, a ``cache_position``/``rope_deltas`` path that accepts per-row offsets, and
a per-row stopping criterion with a streamer that demultiplexes rows; the
equivalence tests (greedy ids equal stock ``generate`` at a 100 % budget) stay the
check either way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from arr_coc.vlm.loading import LoadedVLM
from arr_coc.vlm.pruning import LLMRow, encoder_outputs
from arr_coc.vlm.sampling import RowDecoder
from arr_coc.vlm.static_decoding import StaticDecoder


@dataclass
class PrefillBatch:
    """Model inputs of a left-padded batch.

    input_ids: ``[B, L]``; attention_mask: ``[B, L]`` (0 on padding);
    position_ids: ``[3, B, L]``; next_positions: ``[B]`` position of each row's
    first generated token.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    next_positions: torch.Tensor


def pad_rows(rows: list[LLMRow], pad_token_id: int, device: torch.device) -> PrefillBatch:
    """Left-pad ``rows`` to the longest; padding gets ``pad_token_id`` and position 0."""
    length = max(row.length for row in rows)
    batch = len(rows)
    input_ids = torch.full((batch, length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    position_ids = torch.zeros((3, batch, length), dtype=torch.long)
    for b, row in enumerate(rows):
        start = length - row.length
        input_ids[b, start:] = row.input_ids
        attention_mask[b, start:] = 1
        position_ids[:, b, start:] = row.positions
    next_positions = torch.stack([row.positions[:, -1].max() + 1 for row in rows])
    return PrefillBatch(
        input_ids.to(device), attention_mask.to(device), position_ids.to(device), next_positions.to(device)
    )


@torch.no_grad()
def prefill(vlm: LoadedVLM, rows: list[LLMRow], logits_to_keep: int = 1):
    """One forward over the padded rows with the kept visual features scattered in.

    Returns ``(output, batch)``: ``output.logits`` is ``[B, logits_to_keep, V]``
    (``0`` keeps every position) and ``output.cache`` the KV cache.
    """
    batch = pad_rows(rows, vlm.pad_token_id, vlm.device)
    mask = None if bool(batch.attention_mask.all()) else batch.attention_mask
    output = vlm.model(
        input_ids=batch.input_ids,
        attention_mask=mask,
        position_ids=batch.position_ids,
        mm_encoder_outputs=encoder_outputs(vlm, rows),
        use_cache=True,
        logits_to_keep=logits_to_keep,
    )
    return output, batch


@dataclass
class StepEvent:
    """After the prefill (``step == 0``) and after each decode step: who got which token."""

    step: int
    tokens: list[int | None]  # per row, None when the row had already finished


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generate_rows(
    vlm: LoadedVLM,
    rows: list[LLMRow],
    decoders: list[RowDecoder],
    timings: dict[str, float] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    static: StaticDecoder | None = None,
) -> Iterator[StepEvent]:
    """Prefill then decode with the KV cache until every row's decoder is finished.

    With ``static`` the decode steps run on a static-cache bucket (graph-replayed
    on CUDA) when one is free, else eagerly on the growing cache; the ids are the
    same. Yields one :class:`StepEvent` per step; fills ``timings`` with
    ``prefill`` (time to the first tokens) and ``decode`` milliseconds.
    """
    timings = {} if timings is None else timings
    start = clock()
    output, batch = prefill(vlm, rows)
    keep_first_logprobs(decoders, output.logits[:, -1])
    tokens = _push(decoders, output.logits[:, -1])
    synchronize(vlm.device)
    timings["prefill"] = (clock() - start) * 1000.0
    timings["decode"] = 0.0
    yield StepEvent(0, tokens)
    if all(d.finished for d in decoders):
        return

    most_new = max(d.params.max_new_tokens for d in decoders)
    buffers = None if static is None else static.buffers(len(rows), batch.input_ids.shape[1] + most_new)
    if buffers is not None and buffers.lock.acquire(blocking=False):
        try:
            buffers.load(output.cache, batch.attention_mask, batch.next_positions)

            def static_step(fed: torch.Tensor) -> torch.Tensor:
                buffers.ids.copy_(fed)
                return buffers.run(vlm.model)[: len(rows)]

            yield from _decode_steps(vlm, decoders, tokens, timings, clock, static_step, width=buffers.batch)
        finally:
            buffers.lock.release()
        return

    state = {"cache": output.cache, "mask": batch.attention_mask, "positions": batch.next_positions.clone()}

    def eager_step(fed: torch.Tensor) -> torch.Tensor:
        state["mask"] = torch.cat([state["mask"], state["mask"].new_ones((len(rows), 1))], dim=1)
        out = vlm.model(
            input_ids=fed.to(vlm.device),
            attention_mask=state["mask"],
            position_ids=state["positions"].view(1, -1, 1).expand(3, -1, 1),
            cache=state["cache"],
            use_cache=True,
        )
        state["cache"] = out.cache
        state["positions"] = state["positions"] + 1
        return out.logits[:, -1]

    yield from _decode_steps(vlm, decoders, tokens, timings, clock, eager_step, width=len(rows))


def _decode_steps(vlm, decoders, tokens, timings, clock, step, width: int) -> Iterator[StepEvent]:
    """Run ``step(fed [width, 1]) -> logits [B, V]`` on each row's last token and choose, until every row finishes.

    ``width >= B``: rows past ``B`` are bucket filler and are fed padding.
    """
    count = 0
    while not all(d.finished for d in decoders):
        count += 1
        start = clock()
        fed = [t if t is not None else vlm.pad_token_id for t in tokens]
        fed += [vlm.pad_token_id] * (width - len(decoders))
        tokens = _push(decoders, step(torch.tensor(fed, dtype=torch.long).view(-1, 1)))
        synchronize(vlm.device)
        timings["decode"] += (clock() - start) * 1000.0
        yield StepEvent(count, tokens)


def keep_first_logprobs(decoders: list[RowDecoder], logits: torch.Tensor) -> None:
    """Give each row that asked for it the log-softmax of its first step's ``logits [B, V]``: ``[V]`` float32, CPU.

    Row-wise, so a row's values do not depend on its batch mates; no work when no row asked.
    """
    wanted = [row for row, decoder in enumerate(decoders) if decoder.keep_first_logprobs]
    if not wanted:
        return
    values = torch.log_softmax(logits[wanted].float(), dim=-1).cpu()
    for row, logprobs in zip(wanted, values):
        decoders[row].first_logprobs = logprobs


def _push(decoders: list[RowDecoder], logits: torch.Tensor) -> list[int | None]:
    """Choose and record one token per unfinished row from ``logits [B, V]``.

    Every choice is made on the device (argmax, or the row's own sampler); the
    ``[B]`` choices reach the host in one hand-off per step.
    """
    picks = logits.argmax(dim=-1)  # [B]
    for row, decoder in enumerate(decoders):
        if not decoder.finished and decoder.params.temperature > 0.0:
            picks[row] = decoder.sample(logits[row])
    chosen: list[int | None] = []
    for decoder, token in zip(decoders, picks.tolist()):
        if decoder.finished:
            chosen.append(None)
            continue
        decoder.push(token)
        chosen.append(token)
    return chosen
