"""Continuous batching: requests join and leave one running decode batch between steps.

:class:`StepScheduler` owns the model on one thread. Each round (:meth:`iterate`):

1. newcomers, first come first served into free rows: their preparation (checks,
   scoring, vision with the feature cache, selection) and their prefill run as one
   batch; their KV goes into free rows of the :class:`~arr_coc.vlm.slot_cache.SlotCache`;
2. one decode step over every running row, whatever it was submitted with
   (unary or streamed, any budget, stage, length, sampling settings);
3. a row that finished (EOS, stop string, ``max_new_tokens``, a reader that left)
   hands its result over and frees its row at once.

A row's tokens do not depend on its batch mates: rows are masked from each other,
keep their own M-RoPE positions and their own seeded sampler, so greedy ids equal
the ids the request gets alone (up to float noise of the batch size, as with
:meth:`VLMPipeline.answer_batch`).

Admission is bounded: at most ``rows`` running rows, and at most ``prefill_tokens``
prompt tokens prefilled in one round (the head of the queue always goes in, so a
long prompt is never starved). A long prompt is prefilled whole, between two
steps: chunking it would need a prefill that writes into the slot cache, and
saves at most that one prefill's time, which on a GPU is a few decode steps for
the prompts of this product (a few hundred kept visual tokens plus the question).
Every row has its own ``cache_tokens`` slots; a request that does not fit one
(prompt + ``max_new_tokens`` > slots) is decoded on its own growing cache, one
step per round, beside the batch.

Why not transformers' ``ContinuousBatchingManager``: it takes prompts as token
ids and numbers positions itself (one row of ``range(past, past + n)``), so it can
take neither the pruned rows' visual features nor their 3-row M-RoPE positions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from arr_coc.errors import ArrCocInputError
from arr_coc.vlm.decoding import _push, generate_rows, keep_first_logprobs, prefill, synchronize
from arr_coc.vlm.pipeline import PreparedRequest, VLMPipeline
from arr_coc.vlm.sampling import RowDecoder
from arr_coc.vlm.slot_cache import SlotCache
from arr_coc.vlm.types import AnswerRequest, AnswerResult

logger = logging.getLogger(__name__)

Listener = Callable[[str | None], None]


class SchedulerStoppedError(RuntimeError):
    """The scheduler stopped before the request finished."""


@dataclass
class Ticket:
    """One submitted request: its text deltas go to ``listener`` (``None`` once it ends), its result to :meth:`wait`.

    ``on_done()`` is called (on the scheduler's thread) once the result or the error is set.
    ``queued_behind``: requests ahead of it when it was submitted; ``steps`` and
    ``rows_seen`` (the running rows summed over its steps) say how full its batch was.
    ``busy_ms``: its share of the model's time, in ms: each batched preparation, prefill
    and decode step it was part of, divided among the requests in it (what it cost).
    """

    request: AnswerRequest
    listener: Listener | None = None
    on_done: Callable[[], None] | None = None
    submitted: float = field(default_factory=time.perf_counter)
    queued_behind: int = 0
    result: AnswerResult | None = None
    error: BaseException | None = None
    cancelled: bool = False
    generated_tokens: int = 0
    steps: int = 0
    rows_seen: int = 0  # sum over its steps of the running rows
    busy_ms: float = 0.0
    _done: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """The reader left: the row stops after the step in progress and frees its slots."""
        self.cancelled = True

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> AnswerResult:
        """The result, once the request finished; re-raises its error."""
        if not self._done.wait(timeout):
            raise TimeoutError("the request is still running")
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    def _emit(self, delta: str | None) -> None:
        if self.listener is not None:
            try:
                self.listener(delta)
            except Exception:  # noqa: BLE001 - a reader's failure never stops the batch
                logger.exception("a stream listener failed")
                self.cancelled = True

    def _finish(self, result: AnswerResult | None = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self._done.set()
        self._emit(None)
        if self.on_done is not None:
            try:
                self.on_done()
            except Exception:  # noqa: BLE001 - e.g. the caller's event loop closed
                logger.exception("a request's completion callback failed")


@dataclass
class _Row:
    """A running request: its cache row is its index in :attr:`StepScheduler._running`."""

    ticket: Ticket
    prepared: PreparedRequest
    decoder: RowDecoder
    timings: dict[str, float]
    last: int  # the token it feeds next
    sent: str = ""


@dataclass
class _Solo:
    """A request too long for a slot row, decoded on its own growing cache."""

    ticket: Ticket
    prepared: PreparedRequest
    decoder: RowDecoder
    timings: dict[str, float]
    steps: Iterator
    sent: str = ""


@dataclass
class SchedulerStats:
    """After a round: ``running`` rows, ``queued`` requests, the step's ``step_ms`` and the tokens it chose."""

    running: int
    queued: int
    step_ms: float
    tokens: int


class StepScheduler:
    """Per-step continuous batching over one :class:`VLMPipeline` (see the module docstring).

    ``rows``: most running rows; ``cache_tokens``: slots per row (prompt plus
    answer); ``prefill_tokens``: most prompt tokens prefilled in one round;
    ``observer(stats)`` is called after each round that stepped.
    Use :meth:`start` for a background thread, or call :meth:`iterate` yourself.
    """

    def __init__(
        self,
        pipeline: VLMPipeline,
        rows: int = 16,
        cache_tokens: int = 2048,
        prefill_tokens: int = 8192,
        observer: Callable[[SchedulerStats], None] | None = None,
    ) -> None:
        if rows < 1 or cache_tokens < 2 or prefill_tokens < 1:
            raise ValueError("rows, cache_tokens and prefill_tokens must be positive (cache_tokens >= 2)")
        self.pipeline = pipeline
        graphs = pipeline.static is not None and pipeline.static.graphs
        self.cache = SlotCache(pipeline.vlm, rows, cache_tokens, graphs=graphs)
        self.prefill_tokens = prefill_tokens
        self.observer = observer
        self._queue: deque[Ticket] = deque()
        self._ready: deque[tuple[Ticket, PreparedRequest, dict[str, float]]] = deque()
        self._calls: deque[tuple[Callable, tuple, Future]] = deque()
        self._running: list[_Row] = []
        self._solo: list[_Solo] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    # --- submitting -------------------------------------------------------------------------

    def submit(
        self, request: AnswerRequest, listener: Listener | None = None, on_done: Callable[[], None] | None = None
    ) -> Ticket:
        """Queue ``request``; returns at once. ``listener`` gets its stable text deltas, then ``None``."""
        ticket = Ticket(request, listener, on_done)
        with self._wake:
            if self._stopped:
                raise SchedulerStoppedError("the scheduler has stopped")
            ticket.queued_behind = self.queued
            self._queue.append(ticket)
            self._wake.notify()
        return ticket

    def call(self, function: Callable, *args):
        """``function(*args)`` on the scheduler's thread between two steps (or here when none runs)."""
        if self._thread is None:
            return function(*args)
        future: Future = Future()
        with self._wake:
            self._calls.append((function, args, future))
            self._wake.notify()
        return future.result()

    @property
    def queued(self) -> int:
        return len(self._queue) + len(self._ready)

    @property
    def running(self) -> int:
        return len(self._running) + len(self._solo)

    def idle(self) -> bool:
        return not (self._queue or self._ready or self._running or self._solo or self._calls)

    # --- the thread -------------------------------------------------------------------------

    def start(self) -> StepScheduler:
        self._thread = threading.Thread(target=self._loop, name="arr-coc-step-scheduler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread; requests still queued or running end with :class:`SchedulerStoppedError`."""
        with self._wake:
            self._stopped = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        stopped = SchedulerStoppedError("the scheduler stopped")
        for ticket in [*self._queue, *(t for t, _, _ in self._ready), *(r.ticket for r in self._running)]:
            ticket._finish(error=stopped)
        for solo in self._solo:
            solo.ticket._finish(error=stopped)
        self._queue.clear(), self._ready.clear(), self._running.clear(), self._solo.clear()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopped and self.idle():
                    self._wake.wait()
                if self._stopped:
                    return
            try:
                self.iterate()
            except Exception:  # noqa: BLE001 - the loop outlives any round
                logger.exception("a scheduler round failed")

    # --- one round --------------------------------------------------------------------------

    @torch.no_grad()
    def iterate(self) -> bool:
        """Calls, leavers, admission, one decode step. Returns whether work is left."""
        while self._calls:
            function, args, future = self._calls.popleft()
            try:
                future.set_result(function(*args))
            except BaseException as error:  # noqa: BLE001 - handed to the caller
                future.set_exception(error)
        self._drop_cancelled()
        self._admit()
        self._step()
        self._step_solo()
        return not self.idle()

    def _drop_cancelled(self) -> None:
        for index in reversed(range(len(self._running))):
            if self._running[index].ticket.cancelled:
                self._release(index)
        for solo in [s for s in self._solo if s.ticket.cancelled]:
            self._solo.remove(solo)
            solo.steps.close()
            solo.ticket._finish(self.pipeline._result(solo.prepared, solo.decoder, solo.timings))

    def _take_queue(self, count: int) -> list[Ticket]:
        taken = []
        with self._wake:
            while self._queue and len(taken) < count:
                ticket = self._queue.popleft()
                if ticket.cancelled:
                    ticket._finish(error=SchedulerStoppedError("the request was cancelled before it started"))
                else:
                    taken.append(ticket)
        return taken

    def _prepare(self, tickets: list[Ticket]) -> None:
        """Stages 1-4 for newcomers in one batch (one by one when one of them has bad input)."""
        if not tickets:
            return
        timings: dict[str, float] = {}
        start = time.perf_counter()
        try:
            prepared = self.pipeline.prepare([t.request for t in tickets], timings)
            _share(tickets, start)
            self._ready.extend((t, p, dict(timings)) for t, p in zip(tickets, prepared))
            return
        except ArrCocInputError:
            pass
        except Exception as error:  # noqa: BLE001 - a failing preparation fails its requests only
            logger.exception("preparing %d requests failed", len(tickets))
            for ticket in tickets:
                ticket._finish(error=error)
            return
        for ticket in tickets:
            timings, start = {}, time.perf_counter()
            try:
                prepared_one = self.pipeline.prepare([ticket.request], timings)[0]
            except Exception as error:  # noqa: BLE001 - typed input errors and failures alike end this one request
                ticket._finish(error=error)
                continue
            _share([ticket], start)
            self._ready.append((ticket, prepared_one, timings))

    def _admit(self) -> None:
        free = self.cache.rows - len(self._running) - len(self._ready)
        self._prepare(self._take_queue(max(0, free)))
        chosen: list[tuple[Ticket, PreparedRequest, dict[str, float]]] = []
        prompt_tokens = 0
        while self._ready and len(self._running) + len(chosen) < self.cache.rows:
            ticket, prepared, timings = self._ready[0]
            if ticket.cancelled:
                self._ready.popleft()
                ticket._finish(error=SchedulerStoppedError("the request was cancelled before it started"))
                continue
            if prepared.row.length + prepared.params.max_new_tokens > self.cache.length:
                self._ready.popleft()  # never fits a row: decoded alone, beside the batch
                self._start_solo(ticket, prepared, timings)
                continue
            if chosen and prompt_tokens + prepared.row.length > self.prefill_tokens:
                break
            prompt_tokens += prepared.row.length
            chosen.append(self._ready.popleft())
        if chosen:
            self._prefill(chosen)

    def _prefill(self, group: list[tuple[Ticket, PreparedRequest, dict[str, float]]]) -> None:
        vlm = self.pipeline.vlm
        start = time.perf_counter()
        prepared = [p for _, p, _ in group]
        decoders = self.pipeline._decoders(prepared)
        try:
            output, batch = prefill(vlm, [p.row for p in prepared])
            logits = output.logits[:, -1]
            keep_first_logprobs(decoders, logits)
            tokens = _push(decoders, logits)
        except Exception as error:  # noqa: BLE001 - a failing prefill fails its newcomers only
            logger.exception("the prefill of %d requests failed", len(group))
            for ticket, _, _ in group:
                ticket._finish(error=error)
            return
        synchronize(vlm.device)
        prefill_ms = (time.perf_counter() - start) * 1000.0
        _share([ticket for ticket, _, _ in group], start)
        for b, ((ticket, p, timings), decoder, token) in enumerate(zip(group, decoders, tokens)):
            timings["queue"] = (start - ticket.submitted) * 1000.0 - sum(timings.values())
            timings["prefill"], timings["decode"] = prefill_ms, 0.0
            row = _Row(ticket, p, decoder, timings, last=token if token is not None else 0)
            ticket.generated_tokens = len(decoder.ids)
            self._send(row)
            if decoder.finished or ticket.cancelled:
                self._finish(row)
                continue
            self.cache.load(len(self._running), output.cache, b, p.row.length, batch.next_positions[b])
            self._running.append(row)

    def _step(self) -> None:
        if not self._running:
            return
        running = len(self._running)
        start = time.perf_counter()
        try:
            logits = self.cache.step([row.last for row in self._running])
            tokens = _push([row.decoder for row in self._running], logits)
        except Exception as error:  # noqa: BLE001 - the step failed for every running row alike
            logger.exception("a decode step of %d rows failed", running)
            for row in self._running:
                row.ticket._finish(error=error)
            self._running.clear()
            return
        synchronize(self.pipeline.vlm.device)
        step_ms = (time.perf_counter() - start) * 1000.0
        for row, token in zip(self._running, tokens):
            row.timings["decode"] += step_ms
            row.timings["decode_share"] = row.timings.get("decode_share", 0.0) + step_ms / running
            row.ticket.steps += 1
            row.ticket.rows_seen += running
            row.ticket.busy_ms += step_ms / running
            row.ticket.generated_tokens = len(row.decoder.ids)
            row.last = token if token is not None else row.last
            self._send(row)
        for index in reversed(range(running)):
            if self._running[index].decoder.finished:
                self._release(index)
        if self.observer is not None:
            self.observer(SchedulerStats(self.running, self.queued, step_ms, running))

    def _send(self, row: _Row | _Solo) -> None:
        """The row's new stable text, to its listener."""
        if row.ticket.listener is None:
            return
        text = row.decoder.text if row.decoder.finished else row.decoder.stable_text()
        if len(text) > len(row.sent) and text.startswith(row.sent):
            row.ticket._emit(text[len(row.sent) :])
            row.sent = text

    def _release(self, index: int) -> None:
        """Finish row ``index`` and refill its cache row with the last running row."""
        row = self._running[index]
        last = len(self._running) - 1
        self.cache.move(last, index)
        self._running[index] = self._running[last]
        self._running.pop()
        self._finish(row)

    def _finish(self, row: _Row | _Solo) -> None:
        self._send(row)
        row.timings["total"] = (time.perf_counter() - row.ticket.submitted) * 1000.0
        row.ticket._finish(self.pipeline._result(row.prepared, row.decoder, row.timings))

    # --- requests too long for a slot row -------------------------------------------------------

    def _start_solo(self, ticket: Ticket, prepared: PreparedRequest, timings: dict[str, float]) -> None:
        decoder = self.pipeline._decoders([prepared])[0]
        timings["queue"] = (time.perf_counter() - ticket.submitted) * 1000.0 - sum(timings.values())
        steps = generate_rows(self.pipeline.vlm, [prepared.row], [decoder], timings)
        self._solo.append(_Solo(ticket, prepared, decoder, timings, steps))

    def _step_solo(self) -> None:
        for solo in list(self._solo):
            start = time.perf_counter()
            try:
                ended = next(solo.steps, None) is None or solo.decoder.finished
                synchronize(self.pipeline.vlm.device)
                _share([solo.ticket], start)
            except Exception as error:  # noqa: BLE001 - fails this request only
                logger.exception("decoding a long request failed")
                self._solo.remove(solo)
                solo.ticket._finish(error=error)
                continue
            solo.ticket.generated_tokens = len(solo.decoder.ids)
            self._send(solo)
            if ended:
                self._solo.remove(solo)
                solo.steps.close()
                self._finish(solo)


def _share(tickets: list[Ticket], start: float) -> None:
    """Divide the model time since ``start`` (``perf_counter`` seconds) evenly among ``tickets``' ``busy_ms``."""
    share_ms = (time.perf_counter() - start) * 1000.0 / len(tickets)
    for ticket in tickets:
        ticket.busy_ms += share_ms
