"""The batch-invariance contract (DESIGN.md): what a batch may change about one request's result.

Scores within ``SCORE_TOLERANCE`` of the lone run; the same kept set whenever the
K-th and (K+1)-th lone scores differ by more than ``TIE_GAP``.
"""

import torch

SCORE_TOLERANCE = 1e-5
TIE_GAP = 1e-4


def assert_scores_match(alone: torch.Tensor, together: torch.Tensor) -> None:
    assert alone.shape == together.shape
    worst = float((alone.float() - together.float()).abs().max())
    assert worst <= SCORE_TOLERANCE, f"scores differ by {worst:.2e} between the lone and the batched run"


def clear_cut(scores: torch.Tensor, k: int) -> bool:
    """Whether the top-``k`` of ``scores`` is decided by more than the tie gap."""
    ranked = torch.sort(scores.flatten().float(), descending=True).values
    return k >= ranked.numel() or float(ranked[k - 1] - ranked[k]) > TIE_GAP


def assert_kept_match(alone_scores: torch.Tensor, alone_kept: torch.Tensor, together_kept: torch.Tensor) -> None:
    """Equal kept sets, unless the lone top-K is a tie within ``TIE_GAP`` (then only the count must match)."""
    assert alone_kept.numel() == together_kept.numel()
    if clear_cut(alone_scores, alone_kept.numel()):
        assert torch.equal(alone_kept, together_kept)
