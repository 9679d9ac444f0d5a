"""Which visual tokens a training example keeps: a uniformly random share, or what a relevance selector keeps.

Both return ascending raster indices ``[K]`` of the merged tokens, drawn from a
``torch.Generator`` so a seed replays a run.
"""

from __future__ import annotations

import torch


def random_subset(tokens: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """``[K]`` ascending raster indices of a uniformly random ``ratio`` share of ``tokens`` (at least one)."""
    keep = max(1, round(ratio * tokens))
    return torch.sort(torch.randperm(tokens, generator=generator)[:keep]).values


def target_subset(
    target: torch.Tensor, extra: float, generator: torch.Generator, owners: torch.Tensor | None = None
) -> torch.Tensor:
    """``[K]`` ascending indices: each target of ``target [H', W']`` with a probability drawn from [0.6, 1],
    and a share drawn from [0, ``extra``] of the other tokens (at least one token in all).

    With ``owners [H', W']`` (:func:`arr_coc.tasks.shapes_vqa.token_owners`), those other tokens come from the other objects
    first and from the background only when the objects run out, as a relevance selector that
    cannot tell a look-alike from the asked-for object keeps them (a question about an absent
    colour then shows the model the nearest colours, not random background).
    """
    flat = target.flatten().bool()
    # Three draws per call though two are read: the shipped weights were trained with this stream.
    target_draw, extra_draw, _ = torch.rand(3, generator=generator).tolist()
    targets = torch.nonzero(flat).flatten()
    kept_targets = targets[torch.rand(targets.numel(), generator=generator) < 0.6 + 0.4 * target_draw]
    others = torch.nonzero(~flat).flatten()
    count = round(extra_draw * extra * others.numel())
    if kept_targets.numel() + count == 0:
        count = 1
    order = torch.randperm(others.numel(), generator=generator)
    if owners is not None:
        on_object = owners.flatten()[others[order]] > 0
        order = torch.cat([order[on_object], order[~on_object]])
    kept_others = others[order[:count]]
    return torch.sort(torch.cat([kept_targets, kept_others])).values
