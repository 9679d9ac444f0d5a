"""Held-out relevance recall@budget of every selection method.

For each held-out sample the scorer rates the tokens, then each method keeps a
budget of them through :func:`arr_coc.selection.allocate` (the path the service
uses); recall is the share of the target object's tokens kept, averaged over
samples. ``random`` draws with seed ``seed + sample index``, so its mean is an
honest estimate of the floor, not one lucky draw. Samples without target tokens
(a count question whose answer is 0) have no recall and are left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from arr_coc.metrics import recall_at_budget
from arr_coc.scorer import RelevanceScorer
from arr_coc.selection import FEATURE_METHODS, allocate
from arr_coc.training.data import CachedSample

RecallTable = dict[str, dict[float, float]]
"""``table[method][budget ratio]`` = mean recall in [0, 1]."""


@torch.no_grad()
def recall_table(
    scorer: RelevanceScorer,
    samples: Sequence[CachedSample],
    methods: Sequence[str],
    budgets: Sequence[float],
    seed: int = 0,
) -> RecallTable:
    """Mean recall@budget of ``methods`` x ``budgets`` over ``samples``.

    Feature methods need ``features``; ``cdpruner`` also ``question_tokens``.
    """
    was_training = scorer.training
    scorer.eval()
    sums = {m: {float(b): 0.0 for b in budgets} for m in methods}
    scored = [(index, sample) for index, sample in enumerate(samples) if sample.target.any()]
    if not scored:
        raise ValueError("no held-out sample has target tokens: recall is undefined")
    for index, sample in scored:
        out = scorer.score(sample.image[None], sample.grid, sample.query[None])
        relevance, cells, explore = out.relevance[0].float().cpu(), out.cells[0].cpu(), float(out.explore[0])
        for method in methods:
            if method in FEATURE_METHODS and sample.features is None:
                raise ValueError(f"method {method!r} needs held-out samples encoded with features")
            for budget in budgets:
                (kept,) = allocate(
                    [relevance],
                    float(budget),
                    method,
                    seed + index,
                    grid=[sample.grid],
                    features=[sample.features],
                    query=[sample.query],
                    question_tokens=[sample.question_tokens],
                    cells=[cells],
                    explore=explore,
                )
                sums[method][float(budget)] += recall_at_budget(kept, sample.target)
    scorer.train(was_training)
    return {m: {b: total / len(scored) for b, total in row.items()} for m, row in sums.items()}


def flat_recall(table: RecallTable, prefix: str = "recall") -> dict[str, float]:
    """``{"recall/arr-coc@25": 0.93, ...}``: one scalar per method and budget (budget in percent)."""
    return {f"{prefix}/{m}@{round(b * 100):d}": v for m, row in table.items() for b, v in row.items()}


def format_table(table: RecallTable) -> str:
    """Methods x budgets as aligned text, e.g. for the terminal."""
    budgets = sorted({b for row in table.values() for b in row})
    width = max(len(m) for m in table)
    lines = [f"{'recall':<{width}}  " + "  ".join(f"{round(b * 100):>5d}%" for b in budgets)]
    lines += [f"{m:<{width}}  " + "  ".join(f"{row[b]:6.3f}" for b in budgets) for m, row in table.items()]
    return "\n".join(lines)
