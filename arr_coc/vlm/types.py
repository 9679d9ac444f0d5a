"""What one ARR-COC request asks of the VLM, and what it gets back.

These two dataclasses are the contract between the library, the runners and the
service: the service validates HTTP input into an :class:`AnswerRequest`, the VLM
runner returns an :class:`AnswerResult`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image

from arr_coc.adaptive import AutoBudget


@dataclass
class GenerationParams:
    """Decoding settings of one request.

    temperature: 0 means greedy; > 0 samples with ``top_p`` nucleus filtering.
    max_new_tokens: upper bound of generated tokens (>= 1).
    stop: strings that end the answer (not included in it).
    seed: seeds sampling, so a sampled answer is reproducible.
    """

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0


@dataclass
class AnswerRequest:
    """One question about one image, with the pruning to apply.

    image: RGB PIL image (see ``arr_coc.images.load_image``).
    method: a name registered in ``arr_coc.selection.SELECTORS``.
    budget: kept visual tokens, a count (int >= 1), a ratio (float in (0, 1]) or ``auto``
        (:class:`arr_coc.adaptive.AutoBudget`, or the string ``"auto"``: as many as the question needs).
    relevance: ``[H', W']`` scores already computed for this image and question
        (by the relevance runner); ``None`` lets the pipeline run its own scorer.
    cells, explore: what the same scoring pass gave ``arr-coc``'s coverage term with
        ``relevance``: appearance cells ``[3, H', W']`` and the exploration weight in
        [0, 1]. Without them a given relevance map is selected by its top-K.
    stage: ``post`` selects from the vision tower's outputs (every method); ``pre``
        selects before the tower, which then runs on the kept tokens only
        (``none``, ``uniform``, ``random``, ``arr-coc``).
    first_token_logprobs: also return the first answer token's distribution
        (:attr:`AnswerResult.first_token_logprobs`); off for serving.
    """

    image: Image.Image
    question: str
    method: str = "arr-coc"
    budget: int | float | AutoBudget | str = 0.25
    generation: GenerationParams = field(default_factory=GenerationParams)
    relevance: torch.Tensor | None = None
    stage: str = "post"
    cells: torch.Tensor | None = None
    explore: float | None = None
    first_token_logprobs: bool = False


@dataclass
class AnswerResult:
    """The answer and how it was reached.

    token_ids: generated ids, prompt excluded, stop strings excluded.
    kept: ``LongTensor [K]`` kept visual-token indices in raster order over ``grid``.
    relevance: ``[H', W']`` scores in [0, 1] of every visual token.
    timings_ms: wall-clock milliseconds by stage: ``vision``, ``scoring``,
        ``prefill`` (time to first token), ``decode``.
    vision_cached: the vision tower's outputs came from the feature cache.
    prompt_tokens: tokens the LLM was prompted with (text plus kept visual tokens).
    finish_reason: ``eos``, ``stop`` (a stop string) or ``length`` (``max_new_tokens``).
    first_token_logprobs: ``[V]`` float32 on CPU, the log-softmax of the first decoding
        step's logits (before temperature or top-p), when the request asked for it, else ``None``.
    """

    answer: str
    token_ids: list[int]
    kept: torch.Tensor
    total_tokens: int
    grid: tuple[int, int]
    relevance: torch.Tensor
    timings_ms: dict[str, float]
    vision_cached: bool = False
    prompt_tokens: int = 0
    finish_reason: str | None = None
    first_token_logprobs: torch.Tensor | None = None

    @property
    def kept_tokens(self) -> int:
        return int(self.kept.numel())

    @property
    def kept_ratio(self) -> float:
        return self.kept_tokens / self.total_tokens
