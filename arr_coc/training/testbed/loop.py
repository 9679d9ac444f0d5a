"""The testbed training loop: draw, drop tokens, step, evaluate held out, save a stock checkpoint.

No W&B here: the loop reports through a :class:`TestbedLogger`
(``training_hooks.jobs.train_testbed_job`` logs to W&B). Deterministic for a seed on one machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from arr_coc.evaluation import evaluate_variant
from arr_coc.tasks.shapes_vqa import ShapesVQA
from arr_coc.training.audit import training_starts
from arr_coc.training.data import processor_grid
from arr_coc.training.loop import NullLogger
from arr_coc.training.testbed.config import TrainTestbedConfig
from arr_coc.training.testbed.data import ExampleSet, collate_examples
from arr_coc.training.testbed.losses import step_losses
from arr_coc.training.testbed.model import initial_model
from arr_coc.training.testbed.probe import TokenProbe, kept_labels
from arr_coc.training.testbed.rows import answer_rows
from arr_coc.training.testbed.schedule import Plan, schedule
from arr_coc.variants import get_variant
from arr_coc.vlm.loading import LoadedVLM
from arr_coc.vlm.pipeline import VLMPipeline


class TestbedLogger(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...


@dataclass
class TestbedResult:
    vlm: LoadedVLM
    losses: list[float] = field(default_factory=list)
    heldout_accuracy: float = float("nan")
    steps: int = 0  # steps taken
    planned_steps: int = 0  # where the cosine decay ends (``config.steps`` unless a time budget planned fewer)


@torch.no_grad()
def heldout_accuracy(vlm: LoadedVLM, dataset: ShapesVQA, batch_size: int = 16) -> float:
    """Share of ``dataset`` answered right with all visual tokens, through the serving pipeline (greedy)."""
    was_training = vlm.model.training
    vlm.model.eval()
    records = list(
        evaluate_variant(VLMPipeline(vlm), get_variant("full"), dataset, batch_size=batch_size, max_new_tokens=4)
    )
    vlm.model.train(was_training)
    return sum(r.correct for r in records) / len(records)


def train_testbed(
    config: TrainTestbedConfig, logger: TestbedLogger | None = None, progress: bool = True
) -> TestbedResult:
    """Train the VQA testbed for ``config.steps`` steps and save it (model + processor) to ``config.out``.

    Each example keeps a uniformly random share of its visual tokens (keep ratio uniform
    in ``[min_keep, 1]``) or, for a ``target_share`` of them, what a relevance selector
    keeps (:func:`arr_coc.training.testbed.subsets.target_subset`); a ``pre_share`` drops
    them before the vision tower, the rest after it. The loss is the answer's
    cross-entropy + ``probe_weight`` x the probe's + ``hint_weight`` x the hints'
    (:mod:`arr_coc.training.testbed.losses`). The saved checkpoint is a stock one: it
    serves with SDPA attention.

    With ``config.time_budget_s``, the mean step time of the warm-up's second half
    sets how many steps fit in the budget, and the cosine decay ends there (logged as
    ``train/planned_steps``; replaying that many steps without a budget gives the same
    schedule). A run still past its budget stops at once, whatever the plan: replay
    it with ``steps`` = the planned steps and ``stop_after`` = the steps taken.
    """
    from tqdm.auto import tqdm

    training_starts("train-testbed")
    logger = logger or NullLogger()
    out = Path(config.out)
    vlm = initial_model(out, config.seed, config.init, config.growth, config.device)
    model = vlm.model
    model.requires_grad_(True)
    model.train()
    grid_for = processor_grid(vlm.processor)
    train_set = ShapesVQA(config.steps * config.batch_size, "train", config.seed, grid_for, config.kinds)
    heldout = ShapesVQA(config.heldout_size, "heldout", config.seed, grid_for)
    end_id = vlm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    loader = torch.utils.data.DataLoader(
        ExampleSet(vlm.processor, train_set, end_id, vlm.context_length),
        batch_size=config.batch_size,
        shuffle=False,
        num_workers=config.workers,
        collate_fn=collate_examples,
        persistent_workers=False,
        prefetch_factor=4 if config.workers else None,
    )
    if config.freeze_embeddings:
        model.get_input_embeddings().requires_grad_(False)
    vision = [p for n, p in model.named_parameters() if n.startswith("model.visual.") and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if not n.startswith("model.visual.") and p.requires_grad]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        probe = TokenProbe(vlm.hidden_size, config.balance_counts).to(vlm.device)
    optimizer = torch.optim.AdamW(
        [{"params": rest + list(probe.parameters())}, {"params": vision, "lr": config.lr * config.vision_lr_scale}],
        lr=config.lr,
        weight_decay=config.weight_decay,
        betas=(0.9, 0.98),
    )
    plan = Plan(config.steps)
    stop = config.stop_after or config.steps
    step = 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(config, plan))
    generator = torch.Generator().manual_seed(config.seed)
    losses: list[float] = []
    accuracy = float("nan")
    started = time.perf_counter()
    timed_from = max(1, config.warmup_steps // 2)
    timer_start = started
    bar = tqdm(enumerate(loader, start=1), total=config.steps, desc="train-testbed", disable=not progress)
    for step, examples in bar:
        ratios = (config.min_keep + (1 - config.min_keep) * torch.rand(len(examples), generator=generator)).tolist()
        pre = (torch.rand(len(examples), generator=generator) < config.pre_share).tolist()
        focused = (
            (torch.rand(len(examples), generator=generator) < config.target_share).tolist()
            if config.target_share > 0  # no draw otherwise: earlier recipes replay bit for bit
            else None
        )
        rows, kept, features = answer_rows(
            vlm, examples, ratios, generator, pre, focused, config.target_extra, config.distractors
        )
        losses_now = step_losses(vlm, rows, kept, examples)
        answer = losses_now.answer
        probed = [
            probe.loss(f, kept_labels(e.labels.flatten(1), e.owners.flatten(), k) if before else e.labels.flatten(1))
            for f, e, k, before in zip(features, examples, kept, pre)
            if config.probe_pre or not before
        ]
        probe_loss = torch.stack(probed).mean() if probed else answer.new_zeros(())
        loss = answer + config.probe_weight * probe_loss + config.hint_weight * losses_now.hints
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_([*model.parameters(), *probe.parameters()], 1.0))
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        losses.append(float(answer.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        metrics = {
            "train/loss": losses[-1],
            "train/probe_loss": float(probe_loss.detach()),
            "train/hint_loss": float(losses_now.hints.detach()),
            "train/lr": lr,
            "train/grad_norm": norm,
            "train/elapsed_s": time.perf_counter() - started,
        }
        if step == timed_from:
            timer_start = time.perf_counter()
        if config.time_budget_s and step == max(config.warmup_steps, timed_from + 1):
            elapsed = time.perf_counter() - started
            per_step = (time.perf_counter() - timer_start) / (step - timed_from)
            plan.steps = min(config.steps, step + max(0, int((config.time_budget_s - elapsed) / per_step)))
            bar.total = plan.steps
        metrics["train/planned_steps"] = plan.steps
        out_of_time = bool(config.time_budget_s) and time.perf_counter() - started >= config.time_budget_s
        last = step >= min(stop, plan.steps) or out_of_time
        if last or (config.eval_every and step % config.eval_every == 0):
            accuracy = heldout_accuracy(vlm, heldout)
            metrics["heldout/accuracy"] = accuracy
        logger.log(metrics, step)
        if last:
            break
    model.eval()
    model.requires_grad_(False)
    model.save_pretrained(out, safe_serialization=True)
    vlm.processor.save_pretrained(out)
    return TestbedResult(vlm, losses, accuracy, step, plan.steps)
