"""The scorer training loop: AdamW on the relevance loss, with a logger hook.

The loss is against the task's target masks (``teacher = "labels"``) or against
the VLM's own teacher maps (:func:`arr_coc.training.loss.teacher_loss`).

:func:`train_scorer` knows nothing of W&B: it reports through a
:class:`TrainLogger` (``training_hooks`` provides the W&B one; tests may pass
their own). Per step it reports the loss and its parts, the learning rate and the
gradient norms (total and per module, before clipping); every
``heatmap_every`` steps and at the end, heatmaps of a few held-out samples; every
``eval_every`` steps and at the end, the held-out recall table. After the loop, the
balancer's exploration weight is fitted to the selection's outcome on
``explore_samples`` training samples (:mod:`arr_coc.training.exploration`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from arr_coc.heatmap import overlay
from arr_coc.scorer import RelevanceScorer
from arr_coc.selection import allocate
from arr_coc.training.config import TrainConfig
from arr_coc.training.data import CachedSample, batches, size_groups, stack, stack_teachers
from arr_coc.training.exploration import ExplorationFit, fit_exploration
from arr_coc.training.loss import relevance_loss, teacher_loss
from arr_coc.training.recall import RecallTable, recall_table

HEATMAP_SAMPLES = 4
HEATMAP_BUDGET = 0.25
MAX_GRAD_NORM = 5.0


class TrainLogger(Protocol):
    """Where the loop reports; every method may be a no-op."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def heatmaps(self, panels: list[tuple[Image.Image, str]], step: int) -> None: ...

    def recall(self, table: RecallTable, step: int) -> None: ...


class NullLogger:
    """Reports nowhere."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def heatmaps(self, panels: list[tuple[Image.Image, str]], step: int) -> None:
        pass

    def recall(self, table: RecallTable, step: int) -> None:
        pass


@dataclass
class TrainResult:
    """The trained scorer (eval mode), its final held-out recall and the per-step losses."""

    scorer: RelevanceScorer
    recall: RecallTable
    losses: list[float] = field(default_factory=list)
    exploration: ExplorationFit | None = None


def to_pil(image: torch.Tensor) -> Image.Image:
    """``[3, H, W]`` float in [0, 1] -> RGB PIL image."""
    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array), "RGB")


@torch.no_grad()
def heatmap_panels(scorer: RelevanceScorer, samples: Sequence[CachedSample]) -> list[tuple[Image.Image, str]]:
    """Per sample: relevance overlay with the arr-coc 25 % selection | target mask overlay, captioned."""
    panels = []
    for sample in samples:
        scored = scorer.score(sample.image[None], sample.grid, sample.query[None])
        relevance = scored.relevance[0].float().cpu()
        (kept,) = allocate(
            relevance[None], HEATMAP_BUDGET, "arr-coc", cells=scored.cells.cpu(), explore=float(scored.explore[0])
        )
        picture = to_pil(sample.image)
        left = overlay(picture, relevance, kept)
        right = overlay(picture, sample.target.float())
        panel = Image.new("RGB", (left.width * 2 + 4, left.height), (255, 255, 255))
        panel.paste(left, (0, 0))
        panel.paste(right, (left.width + 4, 0))
        panels.append((panel, f"{sample.question} -> {sample.answer} (left: relevance, kept 25 %; right: target)"))
    return panels


def grad_norms(scorer: RelevanceScorer) -> dict[str, float]:
    """L2 norm of the gradients: ``total`` and one per top-level module."""
    norms = {}
    for name, module in scorer.named_children():
        grads = [p.grad.detach().norm() for p in module.parameters() if p.grad is not None]
        norms[name] = float(torch.stack(grads).norm()) if grads else 0.0
    norms["total"] = math.sqrt(sum(v * v for v in norms.values()))
    return norms


def cosine_schedule(config: TrainConfig):
    """Linear warmup to the peak, then cosine decay to 10 % of it."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def batch_loss(scorer: RelevanceScorer, batch: Sequence[CachedSample], config: TrainConfig):
    """The relevance loss of a batch of any image sizes: one scorer call per size, weighted by group size."""
    total = 0.0
    parts: dict[str, float] = {}
    weights = dict(bce_weight=config.bce_weight, rank_weight=config.rank_weight, temperature=config.rank_temperature)
    for group in size_groups(batch):
        images, grid, queries, targets = stack(group)
        scored = scorer.score(images, grid, queries)
        if config.teacher == "labels":
            criterion = partial(relevance_loss, target=targets, **weights)
        else:
            criterion = partial(teacher_loss, teacher=stack_teachers(group), top_share=config.teacher_top, **weights)
        loss, group_parts = criterion(scored.relevance)
        if config.participatory_weight > 0:
            # The balancer can lean on the query-blind salience maps and starve the one map
            # that reads the question of gradient; this term trains that map on its own.
            alone, alone_parts = criterion(scored.participatory)
            loss = loss + config.participatory_weight * alone
            group_parts["participatory"] = alone_parts["bce"] + alone_parts["rank"]
        share = len(group) / len(batch)
        total = total + loss * share
        for key, value in group_parts.items():
            parts[key] = parts.get(key, 0.0) + value * share
    return total, parts


def train_scorer(
    config: TrainConfig,
    train: Sequence[CachedSample],
    heldout: Sequence[CachedSample],
    query_dim: int,
    logger: TrainLogger | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a fresh :class:`RelevanceScorer` for ``config.steps`` steps; returns it with its held-out recall."""
    logger = logger or NullLogger()
    torch.manual_seed(config.seed)
    scorer = RelevanceScorer(
        query_dim,
        hidden=config.hidden,
        embed_dim=config.embed_dim,
        stem_channels=config.stem_channels,
        stem_pixels_per_cell=config.stem_pixels_per_cell,
        seed=config.seed,
    )
    scorer.train()
    optimizer = torch.optim.AdamW(scorer.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(config))
    shown = list(heldout[:HEATMAP_SAMPLES])
    stream = batches(train, config.batch_size, config.seed)
    losses: list[float] = []
    bar = tqdm(range(1, config.steps + 1), desc="train-scorer", disable=not progress)
    for step in bar:
        scorer.balancer.requires_grad_(step > config.balancer_warmup_steps)
        loss, parts = batch_loss(scorer, next(stream), config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norms = grad_norms(scorer)
        torch.nn.utils.clip_grad_norm_(scorer.parameters(), MAX_GRAD_NORM)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        metrics = {"train/loss": losses[-1], "train/lr": lr, **{f"train/{k}": v for k, v in parts.items()}}
        metrics.update({f"train/grad_norm/{k}": v for k, v in norms.items()})
        logger.log(metrics, step)
        last = step == config.steps
        if config.heatmap_every and step % config.heatmap_every == 0 and not last:
            logger.heatmaps(heatmap_panels(scorer, shown), step)
        if config.eval_every and step % config.eval_every == 0 and not last:
            logger.recall(recall_table(scorer, heldout, config.methods, config.budgets, config.seed), step)
    scorer.eval()
    exploration = None
    if config.explore_samples:
        exploration = fit_exploration(scorer, train[: config.explore_samples], config.seed)
        logger.log(
            {
                "train/explore_utility": exploration.utility_fitted,
                **{f"train/explore_utility/{w:g}": u for w, u in exploration.utility_by_weight.items()},
                "train/explore_mean": float(exploration.predicted.mean()),
            },
            config.steps,
        )
    final = recall_table(scorer, heldout, config.methods, config.budgets, config.seed)
    logger.heatmaps(heatmap_panels(scorer, shown), config.steps)
    logger.recall(final, config.steps)
    return TrainResult(scorer, final, losses, exploration)
