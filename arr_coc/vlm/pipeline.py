"""Answering: image + question -> relevance -> kept visual tokens -> VLM answer.

:class:`VLMPipeline` owns one loaded VLM and one relevance scorer. For a batch of
requests it runs, in order (DESIGN.md, "One request, with shapes"):

1. input checks and the stock processor inputs of each request;
2. the token grid bridge -> resized image ``[3, H, W]`` and grid ``(H', W')``,
   the query embedding ``[D]`` (mean input embedding of the question tokens), and
   the scorer -> relevance ``[H', W']`` (unless the request carries a relevance map
   computed elsewhere, e.g. by the relevance runner, on the same grid);
3. for ``stage = "pre"`` requests, ``allocate`` -> kept indices ``[K_b]`` now;
4. one vision-tower pass over all images -> merger features: ``[N_b, D]`` for
   ``post`` requests, ``[K_b, D]`` for ``pre`` ones (the tower ran on their kept
   patches only, see ``pre_encoder.py``);
5. for ``post`` requests, ``allocate`` on the features -> kept indices ``[K_b]``;
6. the pruned rows (kept tokens at their stock M-RoPE positions) -> one batched
   prefill and cached decode.

Nothing crosses requests: the scorer runs once per image size for the whole
batch, so a request's scores agree within float noise alone and in any batch,
and it gets the same kept tokens (up to ties closer than 1e-4) and the same answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from arr_coc.errors import CheckpointFormatError, InvalidGridError
from arr_coc.provenance import check_scorer_fits
from arr_coc.scorer import RelevanceScorer
from arr_coc.selection import allocate, check_method, check_stage, resolve_budget
from arr_coc.vlm.decoding import generate_rows, synchronize
from arr_coc.vlm.feature_cache import CachedImage, FeatureCache, image_key
from arr_coc.vlm.grid import TokenGrid, merged_grid, resized_image, token_grid
from arr_coc.vlm.inputs import EncodedRequest, check_generation, encode_request
from arr_coc.vlm.loading import LoadedVLM, load_vlm
from arr_coc.vlm.pre_encoder import encode_kept
from arr_coc.vlm.pruning import LLMRow, VisionFeatures, encode_images, full_positions, prune_row
from arr_coc.vlm.sampling import RowDecoder
from arr_coc.vlm.static_decoding import (
    BATCH_BUCKETS,
    LENGTH_STEP,
    StaticDecoder,
    batch_bucket,
    length_bucket,
    resolve_decode,
    static_decode_supported,
)
from arr_coc.vlm.testbed import EMBEDDED_MODEL, EMBEDDED_SCORER
from arr_coc.vlm.types import AnswerRequest, AnswerResult, GenerationParams

logger = logging.getLogger(__name__)


@dataclass
class PreparedRequest:
    """A request after vision, scoring and selection, ready for the LLM.

    grid: ``(H', W')``; relevance: ``[H', W']`` on CPU; kept: ``[K]`` raster indices;
    full_positions: ``[3, L]`` stock ids of the unpruned prompt; row: what the LLM gets.
    """

    request: AnswerRequest
    params: GenerationParams
    encoded: EncodedRequest
    grid: tuple[int, int]
    relevance: torch.Tensor
    kept: torch.Tensor
    full_positions: torch.Tensor
    row: LLMRow
    vision_cached: bool = False

    @property
    def total_tokens(self) -> int:
        return self.grid[0] * self.grid[1]


def check_relevance(relevance: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """A caller-supplied relevance map must hold ``H' * W'`` finite float scores for the VLM's grid."""
    relevance = torch.as_tensor(relevance).detach()
    if relevance.numel() != grid[0] * grid[1] or (relevance.dim() == 2 and tuple(relevance.shape) != grid):
        raise InvalidGridError(
            f"relevance of shape {tuple(relevance.shape)} does not match the VLM's {grid[0]}x{grid[1]} token grid",
            field="relevance",
        )
    if not relevance.is_floating_point() or not torch.isfinite(relevance).all():
        raise InvalidGridError("relevance must hold finite float scores", field="relevance")
    return relevance.reshape(grid)


class VLMPipeline:
    """A loaded Qwen-VL plus a relevance scorer; answers batches and streams."""

    def __init__(
        self, vlm: LoadedVLM, scorer: RelevanceScorer | None = None, decode: str = "auto", feature_cache_mb: float = 0
    ) -> None:
        if scorer is None:
            scorer = RelevanceScorer(query_dim=vlm.hidden_size)
        if scorer.query_dim != vlm.hidden_size:
            raise CheckpointFormatError(
                f"the scorer takes {scorer.query_dim}-d queries but the VLM's embeddings are {vlm.hidden_size}-d",
                field="scorer",
            )
        check_scorer_fits(scorer, vlm)  # ScorerMismatchError when it was trained for another VLM
        self.vlm = vlm
        self.scorer = scorer.to(vlm.device).eval()
        self.decode = resolve_decode(decode, vlm.device)
        if self.decode != "eager" and not static_decode_supported(vlm):
            logger.warning("%s has sliding-window layers; decoding eagerly", vlm.source)
            self.decode = "eager"
        self.static = None if self.decode == "eager" else StaticDecoder(vlm, graphs=self.decode == "graph")
        self.feature_cache = FeatureCache(int(feature_cache_mb * 2**20))

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path | None = None,
        *,
        scorer: str | Path | RelevanceScorer | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        decode: str = "auto",
        feature_cache_mb: float = 0,
    ) -> VLMPipeline:
        """Load ``model`` (hub id or directory) and a scorer (checkpoint directory, module, or ``None``).

        ``model=None`` is the embedded default: the shipped VQA testbed, with its
        shipped scorer when ``scorer`` is ``None``. With any other model, ``scorer=None``
        is the untrained seeded scorer. A scorer that records another VLM than ``model``
        raises :class:`~arr_coc.errors.ScorerMismatchError` (:mod:`arr_coc.provenance`).
        ``decode``: see :data:`DECODE_MODES`.
        ``feature_cache_mb``: bound of the vision-feature and texture cache (0 = off).
        """
        if model is None:
            model = EMBEDDED_MODEL
            scorer = EMBEDDED_SCORER if scorer is None else scorer
        vlm = load_vlm(model, device=device, dtype=dtype)
        if isinstance(scorer, (str, Path)):
            scorer = RelevanceScorer.load(scorer, device=vlm.device)
        return cls(vlm, scorer, decode=decode, feature_cache_mb=feature_cache_mb)

    # --- checks and helpers -------------------------------------------------------------

    def validate(self, request: AnswerRequest) -> GenerationParams:
        """Cheap checks that need no model pass (method, budget, generation settings).

        Returns the normalized generation settings. The question and the image are
        checked when the request is encoded.
        """
        check_method(request.method)
        check_stage(request.stage, request.method)
        resolve_budget(request.budget, 1)
        return check_generation(request.generation)

    def token_grid(self, image) -> TokenGrid:
        """The token grid bridge for one PIL image: grid ``(H', W')`` and resized image ``[3, H, W]``."""
        return token_grid(self.vlm.processor, image)

    @torch.no_grad()
    def query_embedding(self, question_ids: torch.Tensor) -> torch.Tensor:
        """``[D]`` float32: mean of the VLM's input embeddings of ``question_ids [Q]``."""
        embeddings = self.vlm.model.get_input_embeddings()(question_ids.to(self.vlm.device))
        return embeddings.float().mean(dim=0)

    def question_embedding(self, question: str) -> torch.Tensor:
        """``[D]`` query embedding of a question string (for ``arr-coc relevance --model``)."""
        ids = self.vlm.tokenizer(question, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        return self.query_embedding(ids)

    # --- the stages ---------------------------------------------------------------------

    @torch.no_grad()
    def prepare(self, requests: Sequence[AnswerRequest], timings: dict[str, float]) -> list[PreparedRequest]:
        """Stages 1-4 for a batch; adds ``preprocess``, ``vision`` and ``scoring`` ms to ``timings``."""
        vlm = self.vlm
        clock = time.perf_counter
        start = clock()
        params = [self.validate(r) for r in requests]
        encoded = [
            encode_request(vlm.processor, r.image, r.question, vlm.context_length, p.max_new_tokens)
            for r, p in zip(requests, params)
        ]
        timings["preprocess"] = (clock() - start) * 1000.0

        start = clock()
        image_processor = vlm.processor.image_processor
        embed = vlm.model.get_input_embeddings()
        grids = [merged_grid(e.image_grid_thw, vlm.merge_size) for e in encoded]
        questions = [embed(e.question_ids.to(vlm.device)).float() for e in encoded]  # [Q_b, D]
        queries = [q.mean(dim=0) for q in questions]  # [D] each, as query_embedding
        relevance: list[torch.Tensor | None] = [
            None if r.relevance is None else check_relevance(r.relevance, g) for r, g in zip(requests, grids)
        ]
        cells = [None if r.relevance is None else r.cells for r in requests]
        explore = [0.0 if r.relevance is None or r.explore is None else r.explore for r in requests]
        pre = [b for b, r in enumerate(requests) if r.stage == "pre"]
        cache = self.feature_cache
        keys = [image_key(r.image) for r in requests] if cache.enabled else [None] * len(requests)
        cached = [cache.get(k, count=r.stage != "pre") if k else CachedImage() for k, r in zip(keys, requests)]
        to_score = [b for b, scores in enumerate(relevance) if scores is None]
        if to_score:
            images = [
                resized_image(encoded[b].pixel_values, encoded[b].image_grid_thw, image_processor) for b in to_score
            ]
            scored = self.scorer.score_images(
                images,
                [grids[b] for b in to_score],
                torch.stack([queries[b] for b in to_score]),
                textures=[cached[b].texture for b in to_score],
            )
            for b, out in zip(to_score, scored):
                relevance[b], cells[b], explore[b] = out.relevance, out.cells.cpu(), float(out.explore)
                if keys[b] and cached[b].texture is None:
                    cache.put(keys[b], texture=out.texture)
        relevance = [scores.float().cpu() for scores in relevance]
        kept: list[torch.Tensor | None] = [None] * len(requests)

        def select(members: list[int], features: list[torch.Tensor] | None) -> None:
            chosen = allocate(
                [relevance[b] for b in members],
                [requests[b].budget for b in members],
                [requests[b].method for b in members],
                [params[b].seed for b in members],
                grid=[grids[b] for b in members],
                features=features,
                query=[queries[b] for b in members],
                question_tokens=[questions[b] for b in members],
                cells=[cells[b] for b in members],
                explore=[explore[b] for b in members],
                calibration=self.scorer.calibration,
            )
            for b, k in zip(members, chosen):
                kept[b] = k

        if pre:
            select(pre, None)
        synchronize(vlm.device)
        scoring_ms = (clock() - start) * 1000.0

        start = clock()
        vision: list[VisionFeatures | None] = [None if b in pre else cached[b].features for b in range(len(requests))]
        run = [b for b, v in enumerate(vision) if v is None]  # "pre" requests and uncached "post" ones
        if run:
            pixel_values = [encoded[b].pixel_values for b in run]
            grids_thw = [encoded[b].image_grid_thw for b in run]
            if pre:  # one tower call: the kept patches of "pre" images, every patch of the others
                computed = encode_kept(vlm, pixel_values, grids_thw, [kept[b] for b in run])
            else:
                computed = encode_images(vlm, pixel_values, grids_thw)
            for b, features in zip(run, computed):
                vision[b] = features
                if keys[b] and b not in pre:
                    cache.put(keys[b], features=features)
        synchronize(vlm.device)
        timings["vision"] = (clock() - start) * 1000.0

        start = clock()
        post = [b for b in range(len(requests)) if requests[b].stage != "pre"]
        if post:
            select(post, [vision[b].features for b in post])
        synchronize(vlm.device)
        timings["scoring"] = scoring_ms + (clock() - start) * 1000.0

        prepared = []
        for r, p, e, v, g, rel, k, c in zip(requests, params, encoded, vision, grids, relevance, kept, cached):
            positions = full_positions(vlm, e.input_ids, e.mm_token_type_ids, e.image_grid_thw)
            row = prune_row(e.input_ids, positions, e.mm_token_type_ids, v, k, vision_is_kept=r.stage == "pre")
            hit = r.stage != "pre" and c.features is not None
            prepared.append(PreparedRequest(r, p, e, g, rel, k, positions, row, vision_cached=hit))
        return prepared

    def _decoders(self, prepared: Sequence[PreparedRequest]) -> list[RowDecoder]:
        return [
            RowDecoder(
                self.vlm.tokenizer,
                p.params,
                self.vlm.eos_token_ids,
                self.vlm.device,
                keep_first_logprobs=p.request.first_token_logprobs,
            )
            for p in prepared
        ]

    @staticmethod
    def _result(p: PreparedRequest, decoder: RowDecoder, timings: dict[str, float]) -> AnswerResult:
        return AnswerResult(
            answer=decoder.text,
            token_ids=decoder.answer_ids,
            kept=p.kept,
            total_tokens=p.total_tokens,
            grid=p.grid,
            relevance=p.relevance,
            timings_ms=dict(timings),
            vision_cached=p.vision_cached,
            prompt_tokens=p.row.length,
            finish_reason=decoder.finish_reason,
            first_token_logprobs=decoder.first_logprobs,
        )

    def warm_up(self, batch_sizes: Sequence[int] = (1,), cache_tokens: int = 0) -> dict[int, float]:
        """Answer one small synthetic batch per size, so no real request pays first-call costs.

        Every stage runs (processor, vision tower, scorer, selection, prefill, decode)
        for a 224x224 image and two new tokens. With graph decode, every batch
        bucket a batch of up to ``max(batch_sizes)`` rows can use is also captured at each cache length up to
        ``cache_tokens``. Returns milliseconds per batch size.
        """
        image = Image.linear_gradient("L").resize((224, 224)).convert("RGB")
        request = AnswerRequest(
            image, "What colour is the circle?", "arr-coc", 0.25, GenerationParams(max_new_tokens=2)
        )
        spent = {}
        for size in batch_sizes:
            start = time.perf_counter()
            self.answer_batch([request] * size)
            spent[size] = (time.perf_counter() - start) * 1000.0
        if self.static is not None and self.static.graphs and cache_tokens > 0:
            largest = batch_bucket(max(batch_sizes)) or max(BATCH_BUCKETS)
            rows = tuple(b for b in BATCH_BUCKETS if b <= largest)
            length = LENGTH_STEP
            while length <= length_bucket(cache_tokens):
                self.static.warm_up(rows, length)
                length *= 2
        return spent

    # --- public answering ---------------------------------------------------------------

    def answer_batch(self, requests: Sequence[AnswerRequest]) -> list[AnswerResult]:
        """Answer several requests in one batch; results in request order.

        Requests may differ in image size, question, method, budget and generation
        settings; each result equals the one the request gets alone. Stage timings
        (ms) are those of the whole batch: ``preprocess``, ``vision``, ``scoring``,
        ``prefill`` (time to first token), ``decode`` and ``total``.
        """
        if not requests:
            return []
        timings: dict[str, float] = {}
        start = time.perf_counter()
        prepared = self.prepare(requests, timings)
        decoders = self._decoders(prepared)
        for _ in generate_rows(self.vlm, [p.row for p in prepared], decoders, timings, static=self.static):
            pass
        timings["total"] = (time.perf_counter() - start) * 1000.0
        return [self._result(p, d, timings) for p, d in zip(prepared, decoders)]

    def answer(self, request: AnswerRequest) -> AnswerResult:
        """Answer one request."""
        return self.answer_batch([request])[0]

    def stream(self, request: AnswerRequest) -> AnswerStream:
        """Prepare ``request`` now (so bad input raises here) and return an iterator of text deltas."""
        timings: dict[str, float] = {}
        start = time.perf_counter()
        prepared = self.prepare([request], timings)[0]
        return AnswerStream(self, prepared, timings, start)


class AnswerStream:
    """Iterate for the answer's text deltas; ``result`` is the :class:`AnswerResult` once exhausted.

    The concatenated deltas equal ``result.answer``. A delta is only emitted once
    it can no longer change (no half characters, no possible start of a stop string).
    """

    def __init__(self, pipeline: VLMPipeline, prepared: PreparedRequest, timings: dict[str, float], start: float):
        self._pipeline = pipeline
        self._prepared = prepared
        self._timings = timings
        self._start = start
        self._decoder: RowDecoder | None = None
        self.result: AnswerResult | None = None

    @property
    def generated_tokens(self) -> int:
        """Tokens generated so far: all of them once exhausted, fewer when the reader left early."""
        return 0 if self._decoder is None else len(self._decoder.ids)

    def __iter__(self) -> Iterator[str]:
        if self.result is not None:
            raise RuntimeError("an AnswerStream can be iterated only once")
        decoder = self._decoder = self._pipeline._decoders([self._prepared])[0]
        sent = ""
        for _ in generate_rows(
            self._pipeline.vlm, [self._prepared.row], [decoder], self._timings, static=self._pipeline.static
        ):
            text = decoder.stable_text()
            if len(text) > len(sent) and text.startswith(sent):
                yield text[len(sent) :]
                sent = text
        final = decoder.text
        if final.startswith(sent) and len(final) > len(sent):
            yield final[len(sent) :]
        self._timings["total"] = (time.perf_counter() - self._start) * 1000.0
        self.result = VLMPipeline._result(self._prepared, decoder, self._timings)
