"""Quality and latency measures shared by scorer training, evaluation and comparison.

- :func:`recall_at_budget`: the share of the target object's tokens that a
  selection kept (1.0 = every token of the object reached the VLM);
- :func:`answer_matches`: whether a generated answer's first word is the expected one;
- :func:`percentile`: nearest-rank percentile, the one the tracker uses too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch

_WORD = re.compile(r"[a-z0-9]+")


def recall_at_budget(kept: torch.Tensor, target: torch.Tensor) -> float:
    """``|kept ∩ target| / |target|`` for ``kept [K]`` raster indices and ``target [H', W']`` bool.

    Raises ``ValueError`` for an empty target (its recall is undefined).
    """
    flat = target.reshape(-1).bool()
    total = int(flat.sum())
    if total == 0:
        raise ValueError("the target mask is empty")
    return float(flat[kept.long().cpu()].sum()) / total


def answer_matches(answer: str, expected: str) -> bool:
    """True when the first word of ``answer`` equals ``expected`` (case-insensitive; words are ``[a-z0-9]+``).

    The synthetic VQA task's accuracy: ``"Red."`` matches ``red``, ``"a red one"`` does not.
    """
    words = _WORD.findall(answer.lower())
    wanted = _WORD.findall(expected.lower())
    return bool(words) and words[:1] == wanted


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank ``q``-th percentile (``q`` in [0, 100]) of a non-empty sequence."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])
