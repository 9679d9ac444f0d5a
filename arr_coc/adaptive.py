"""An adaptive budget: as few tokens as each question needs.

``budget = "auto"`` keeps the smallest set of most relevant tokens whose share of the
image's *relevance mass* reaches ``coverage``, within ``[min_tokens, max_tokens]``.
The mass of a token is the scorer's calibrated probability that the token is one the
question is about:

    p_i = sigmoid(scale * logit(s_i) + shift)          s_i: relevance in [0, 1]

with ``(scale, shift)`` fitted on the training split of the synthetic VQA task
(:func:`fit_calibration`, Platt scaling), so that a coverage of 0.9 keeps about 90 %
of the target tokens on that split. An easy question about one small object then
keeps a few tokens; a count over many objects keeps many. ``K`` depends only on the
image's own scores, so batching never changes it.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict

from arr_coc.errors import InvalidBudgetError

AUTO = "auto"
DEFAULT_COVERAGE = 0.7  # chosen on a validation draw of the training split (see docs/quality)
IDENTITY = (1.0, 0.0)
_EPS = 1e-6


class AutoBudget(BaseModel):
    """``auto``: keep until ``coverage`` of the relevance mass, at least ``min_tokens``, at most ``max_tokens``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    coverage: float = DEFAULT_COVERAGE
    min_tokens: int = 1
    max_tokens: int | None = None

    def __str__(self) -> str:
        """``auto``, or e.g. ``auto(coverage=0.9,min=4)`` with what differs from the defaults."""
        changed = [
            f"{name.removesuffix('_tokens')}={value:g}"
            for name, value in self.model_dump().items()
            if value is not None and value != AutoBudget.model_fields[name].default
        ]
        return f"{AUTO}({','.join(changed)})" if changed else AUTO


def auto_budget(
    coverage: float | None = None, min_tokens: int | None = None, max_tokens: int | None = None
) -> AutoBudget:
    """An :class:`AutoBudget`, or :class:`InvalidBudgetError` naming the bad field."""
    coverage = DEFAULT_COVERAGE if coverage is None else coverage
    min_tokens = 1 if min_tokens is None else min_tokens
    if (
        isinstance(coverage, bool)
        or not isinstance(coverage, (int, float))
        or not math.isfinite(coverage)
        or not 0.0 < coverage <= 1.0
    ):
        raise InvalidBudgetError(f"coverage must be a number in (0, 1], got {coverage!r}", field="coverage")
    for name, value in (("min_tokens", min_tokens), ("max_tokens", max_tokens)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InvalidBudgetError(f"{name} must be an int >= 1, got {value!r}", field=name)
    if max_tokens is not None and max_tokens < min_tokens:
        raise InvalidBudgetError(f"max_tokens {max_tokens} is below min_tokens {min_tokens}", field="max_tokens")
    return AutoBudget(coverage=float(coverage), min_tokens=min_tokens, max_tokens=max_tokens)


def target_probability(relevance: torch.Tensor, calibration: tuple[float, float] = IDENTITY) -> torch.Tensor:
    """``[N]`` calibrated probability that each token is a target, from ``relevance [N]`` in [0, 1]."""
    scale, shift = calibration
    logits = torch.logit(relevance.detach().float().clamp(_EPS, 1.0 - _EPS))
    return torch.sigmoid(scale * logits + shift)


def auto_count(relevance: torch.Tensor, budget: AutoBudget, calibration: tuple[float, float] = IDENTITY) -> int:
    """``K``: the fewest most-relevant tokens of ``relevance [N]`` holding ``coverage`` of the mass, within bounds."""
    count = relevance.numel()
    mass = torch.sort(target_probability(relevance.flatten(), calibration), descending=True).values.double()
    cumulative = torch.cumsum(mass, dim=0)
    needed = budget.coverage * float(cumulative[-1]) * (1.0 - 1e-9)
    k = int(torch.searchsorted(cumulative, torch.tensor([needed], dtype=torch.float64)).item()) + 1
    upper = count if budget.max_tokens is None else min(count, budget.max_tokens)
    return max(min(budget.min_tokens, count), min(k, upper))


def fit_calibration(relevance: torch.Tensor, targets: torch.Tensor, steps: int = 200) -> tuple[float, float]:
    """Platt scaling: ``(scale, shift)`` so ``sigmoid(scale * logit(s) + shift)`` is ``P(target | s)``.

    ``relevance [T]`` scores in [0, 1] and ``targets [T]`` 0/1 labels of tokens pooled
    over many images; fitted by maximum likelihood (L-BFGS on the log loss).
    """
    logits = torch.logit(relevance.detach().double().clamp(_EPS, 1.0 - _EPS))
    labels = targets.detach().double()
    params = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([params], max_iter=steps, line_search_fn="strong_wolfe")

    def loss():
        optimizer.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(params[0] * logits + params[1], labels)
        value.backward()
        return value

    optimizer.step(loss)
    scale, shift = (float(v) for v in params.detach())
    return scale, shift
