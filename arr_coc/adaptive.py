"""An adaptive budget: as few tokens as each question needs.

``budget = "auto"`` keeps the most relevant tokens of an image, as many as its
relevance says the question needs, within ``[min_tokens, max_tokens]``. A token's
chance of being one the question is about is the scorer's calibrated probability

    p_i = sigmoid(scale * logit(s_i) + shift)          s_i: relevance in [0, 1]

with ``(scale, shift)`` fitted on the training split of the synthetic VQA task
(:func:`fit_calibration`, Platt scaling). How many tokens ``coverage`` keeps:

- A scorer with a fitted *coverage table* (:func:`fit_coverage_table`, written by
  ``arr-coc calibrate``) keeps every token with ``p_i >= threshold(coverage)``. The
  table is fitted so that on the training split the kept tokens hold ``coverage`` of
  the question's target tokens on average. One threshold for every image spends the
  tokens where they are most likely targets: a question about one small object keeps
  its few likely tokens, a count over many objects keeps many, and a map the scorer is
  unsure of does not spend a large share of the image on its background.
- A scorer without one (never calibrated) keeps, per image, the fewest top tokens
  holding ``coverage`` of that image's own relevance mass ``sum(p)``.

``K`` depends only on the image's own scores, so batching never changes it.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from arr_coc.errors import InvalidBudgetError

AUTO = "auto"
# the largest coverage whose mean kept ratio stays within 7 % on three validation draws
DEFAULT_COVERAGE = 0.84
_EPS = 1e-6
TABLE_ROWS = 100  # a coverage table's thresholds: percentiles of the target tokens' probabilities


class Calibration(BaseModel):
    """How a scorer's relevance becomes an ``auto`` budget.

    ``sigmoid(scale * logit(relevance) + shift)`` is the chance a token is a target;
    ``coverage_table`` holds ``(coverage, threshold)`` pairs, coverage ascending and
    threshold descending: keeping the tokens whose chance is at least ``threshold``
    kept ``coverage`` of the target tokens on the training split. Empty: never fitted.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    scale: float = Field(1.0, allow_inf_nan=False)
    shift: float = Field(0.0, allow_inf_nan=False)
    coverage_table: tuple[tuple[float, float], ...] = ()

    @model_validator(mode="after")
    def _ordered_probabilities(self) -> Calibration:
        coverages = [c for c, _ in self.coverage_table]
        thresholds = [t for _, t in self.coverage_table]
        if not all(0.0 <= v <= 1.0 for v in coverages + thresholds):
            raise ValueError("coverage_table values must lie in [0, 1]")
        if coverages != sorted(coverages) or thresholds != sorted(thresholds, reverse=True):
            raise ValueError("coverage_table must rise in coverage as its threshold falls")
        return self

    def threshold(self, coverage: float) -> float:
        """The chance a token must reach to be kept for ``coverage`` (table interpolated; 0 at coverage 1)."""
        if coverage >= 1.0:
            return 0.0
        previous = None
        for covered, threshold in self.coverage_table:
            if covered >= coverage:
                if previous is None or covered == previous[0]:
                    return threshold
                weight = (coverage - previous[0]) / (covered - previous[0])
                return previous[1] + weight * (threshold - previous[1])
            previous = (covered, threshold)
        return 0.0


IDENTITY = Calibration()


class AutoBudget(BaseModel):
    """``auto``: the tokens ``coverage`` asks for (see the module), at least ``min_tokens``, at most ``max_tokens``.

    ``coverage``: :data:`arr_coc.vocabulary.COVERAGE_MEANING`.
    """

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


def target_probability(relevance: torch.Tensor, calibration: Calibration = IDENTITY) -> torch.Tensor:
    """``[N]`` calibrated probability that each token is a target, from ``relevance [N]`` in [0, 1]."""
    logits = torch.logit(relevance.detach().float().clamp(_EPS, 1.0 - _EPS))
    return torch.sigmoid(calibration.scale * logits + calibration.shift)


def auto_count(relevance: torch.Tensor, budget: AutoBudget, calibration: Calibration = IDENTITY) -> int:
    """``K`` for ``relevance [N]``: the tokens ``coverage`` needs (see the module), within the bounds."""
    count = relevance.numel()
    probability = target_probability(relevance.flatten(), calibration)
    if calibration.coverage_table:
        k = int((probability >= calibration.threshold(budget.coverage)).sum())
    else:
        cumulative = torch.cumsum(torch.sort(probability, descending=True).values.double(), dim=0)
        needed = budget.coverage * float(cumulative[-1]) * (1.0 - 1e-9)
        k = int(torch.searchsorted(cumulative, torch.tensor([needed], dtype=torch.float64)).item()) + 1
    upper = count if budget.max_tokens is None else min(count, budget.max_tokens)
    return max(min(budget.min_tokens, count), min(k, upper))


def fit_calibration(relevance: torch.Tensor, targets: torch.Tensor, steps: int = 200) -> Calibration:
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
    return Calibration(scale=scale, shift=shift)


def fit_coverage_table(
    maps: list[torch.Tensor],
    targets: list[torch.Tensor],
    calibration: Calibration,
    orders: list[torch.Tensor] | None = None,
) -> tuple[tuple[float, float], ...]:
    """``(coverage, threshold)`` pairs: the mean share of target tokens kept when ``p >= threshold`` sets the count.

    ``maps`` are ``[N_b]`` relevance maps and ``targets`` their ``[N_b]`` 0/1 labels;
    images without a target do not count toward the mean. ``orders`` gives, per image,
    the order ``[N_b]`` in which the serving selection keeps tokens (it keeps the first
    ``K``: ``arr-coc`` trades relevance for coverage); without it, by probability, so a
    threshold keeps exactly the tokens above it. The thresholds are the percentiles of
    the target tokens' probabilities (:data:`TABLE_ROWS` of them, so neighbouring rows
    differ by about 1 % of coverage), then ``(1, 0)``; a row's coverage is at least the
    one above it.
    """
    orders = orders or [None] * len(maps)
    labelled = [
        (target_probability(m, calibration), t.bool(), order) for m, t, order in zip(maps, targets, orders) if t.any()
    ]
    if not labelled:
        raise ValueError("fitting a coverage table needs images with target tokens")
    labelled = [
        (p, t, torch.sort(p, descending=True, stable=True).indices if order is None else order)
        for p, t, order in labelled
    ]
    pooled = torch.cat([probability[target] for probability, target, _ in labelled]).double()
    levels = torch.linspace(1.0, 0.0, TABLE_ROWS + 1, dtype=torch.float64)
    thresholds = torch.unique(torch.quantile(pooled, levels)).flip(0).tolist()
    table, floor = [], 0.0
    for threshold in thresholds:
        recalls = []
        for probability, target, order in labelled:
            kept = order[: int((probability >= threshold).sum())]
            recalls.append(float(target[kept].sum() / target.sum()))
        floor = max(floor, sum(recalls) / len(recalls))
        table.append((floor, threshold))
    return (*table, (1.0, 0.0))
