"""Dense supervision of the vision tower: a linear probe of each visual token's labels, discarded after training.

The labels (:func:`arr_coc.tasks.shapes_vqa.token_labels`) are the colour and shape of the
object covering the token, whether an object's centre falls in it, and how many objects
share its colour. For a tower that ran on the kept patches only, :func:`kept_labels` says
what those patches alone can show.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from arr_coc.tasks.shapes_vqa import COLOURS, MAX_OBJECTS, SHAPES


class TokenProbe(torch.nn.Module):
    """Linear read-out of each visual token's colour, shape, centre flag and same-colour count from merger
    outputs ``[N, D]`` (the labels of :func:`arr_coc.tasks.shapes_vqa.token_labels`)."""

    def __init__(self, width: int, balance_counts: bool = False) -> None:
        super().__init__()
        self.balance_counts = balance_counts
        self.colour = torch.nn.Linear(width, 1 + len(COLOURS))
        self.shape = torch.nn.Linear(width, 1 + len(SHAPES))
        self.centre = torch.nn.Linear(width, 1)
        self.count = torch.nn.Linear(width, 1 + MAX_OBJECTS)

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Class-balanced loss of one image: ``features [N, D]``, ``labels [4, N]``; object and
        background tokens weigh equally (with ``balance_counts``, each same-colour count does)."""
        features = features.float()
        on_object = labels[0] > 0
        parts = []
        labels = labels.to(features.device)
        for head, target in ((self.colour, labels[0]), (self.shape, labels[1])):
            per_token = F.cross_entropy(head(features), target, reduction="none")
            parts.append(_balanced(per_token, on_object))
        count = F.cross_entropy(self.count(features), labels[3], reduction="none")
        if self.balance_counts:
            parts.append(torch.stack([count[labels[3] == c].mean() for c in labels[3].unique()]).mean())
        else:
            parts.append(_balanced(count, on_object))
        centre = F.binary_cross_entropy_with_logits(self.centre(features)[:, 0], labels[2].float(), reduction="none")
        parts.append(_balanced(centre, labels[2] > 0))
        return sum(parts)


def kept_labels(labels: torch.Tensor, owners: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """``[4, K]``: the probe labels ``labels [4, N]`` of the kept tokens ``kept [K]`` as a tower that saw
    only those tokens can know them: the same-colour count counts the objects still visible (those
    owning at least one kept token, ``owners [N]`` from :func:`arr_coc.tasks.shapes_vqa.token_owners`)."""
    labels = labels[:, kept].clone()
    owners = owners[kept]
    for colour in labels[0].unique().tolist():
        if colour == 0:
            continue
        same = labels[0] == colour
        labels[3, same] = owners[same].unique().numel()
    return labels


def _balanced(per_token: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    means = [per_token[group].mean() for group in (positive, ~positive) if group.any()]
    return sum(means) / len(means)
