"""``arr-coc distill-scorer`` as a W&B job (``job_type="distill"``): a scorer taught by the VLM itself.

Parameters: defaults < ``--config`` file < flags < Launch overrides, validated as
:class:`arr_coc.distill.config.DistillConfig` and logged as the run config. Two
phases, so N Launch jobs can share the teacher's work:

1. teacher maps: for every pair of the run's shard (``shard K/N``; all pairs
   when none is given) the VLM answers with all its tokens and the teacher rates
   each token; the shard goes to ``maps`` (default ``<out>/teacher-maps``) and into
   a ``teacher-maps`` artifact. A run with ``shard`` stops here.
2. training: every shard of ``maps`` (they must cover the pairs once), the scorer
   trained on them (:func:`arr_coc.training.loop.train_scorer`), saved with the VLM
   it was trained for and calibrated for ``auto`` budgets against the teacher's top
   tokens (no labels), logged as the ``relevance-scorer`` model artifact, with the
   teacher maps as images and a fidelity table on held-out pairs (answers equal to
   the model's own all-token answers). The encoded samples wait on disk, in a hidden
   temporary folder of ``out`` removed once training ends (:mod:`arr_coc.distill.store`),
   and no pair keeps its decoded image, so memory does not grow with the number of pairs.

Where the pairs have labels (the synthetic task) they only evaluate: held-out
recall of the target tokens and the teacher's own top-K recall of them.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from arr_coc.distill.config import DistillConfig, distill_config
from arr_coc.training.audit import training_starts
from arr_coc.training.config import load_config_file
from arr_coc.training.recall import flat_recall, format_table
from training_hooks.jobs.jobrun import (
    declare_launch_inputs,
    finishing,
    launch_overrides,
    resolve_mode,
    run_config,
    start_run,
)
from training_hooks.jobs.train_job import ARTIFACT_NAME, WandbTrainLogger

MAPS_ARTIFACT = "teacher-maps"
CALIBRATION_SAMPLES = 400
SHOWN_MAPS = 8
FIDELITY_BUDGETS = (0.05, 0.1, 0.25)
TEACHER_RECALL_BUDGETS = (0.05, 0.1, 0.25)


def resolve_config(config_file: str | None, cli_values: dict[str, Any]) -> DistillConfig:
    """Defaults < file < flags < Launch overrides, validated before any W&B or model work."""
    file_values = load_config_file(config_file) if config_file else {}
    distill_config(file_values, cli_values)  # a bad file or flag is reported as such, before overrides
    return distill_config(file_values, cli_values, launch_overrides())


def run_distill_job(
    config_file: str | None,
    cli_values: dict[str, Any],
    *,
    wandb_mode: str = "auto",
    device: str = "auto",
    dtype: str = "auto",
    progress: bool = True,
) -> int:
    """Resolve, compute teacher maps with the VLM in ``dtype`` on ``device``, train the scorer (float32), save,
    log; returns the exit code (0)."""
    from arr_coc.vlm.loading import resolved_names

    config = resolve_config(config_file, cli_values)
    training_starts("distill-scorer")
    run = start_run(
        job_type="distill",
        config={**config.model_dump(), **resolved_names(device, dtype)},
        mode=resolve_mode(wandb_mode),
        group="scorer-distillation",
    )
    with finishing(run):
        declare_launch_inputs(run, list(DistillConfig.model_fields))
        config = distill_config(config.model_dump(), run_config(run, DistillConfig.model_fields))
        result = _distill(run, config, device, dtype, progress)
    print(result)
    return 0


def _distill(run, config: DistillConfig, device: str, dtype: str, progress: bool) -> str:
    from arr_coc.distill.data import distill_pairs
    from arr_coc.distill.maps import load_teacher_maps, parse_shard
    from arr_coc.vlm.pipeline import VLMPipeline

    pipeline = VLMPipeline.from_pretrained(config.model or None, device=device, dtype=dtype)
    pairs, skipped = distill_pairs(config, pipeline)
    run.summary.update({"pairs": len(pairs), **{f"skipped/{reason}": n for reason, n in skipped.items()}})
    maps = Path(config.maps or Path(config.out) / "teacher-maps")
    if config.teacher == "labels":
        return str(_train(run, config, pipeline, pairs, [None] * len(pairs), progress))
    shards = [parse_shard(config.shard)] if config.shard else [(0, 1)]
    if config.shard or not any(maps.glob(f"teacher-{config.teacher}-*-of-*.safetensors")):
        teacher = _teacher(run, config, pipeline, pairs)
        for shard in shards:
            _teacher_shard(run, config, teacher, pipeline, pairs, shard, maps, progress)
    if config.shard:
        return f"teacher maps: {maps} (shard {config.shard})"
    records = load_teacher_maps(maps, config.teacher, len(pairs))
    return f"checkpoint: {_train(run, config, pipeline, pairs, records, progress)}"


def _teacher(run, config: DistillConfig, pipeline, pairs):
    """The run's :class:`TeacherConfig`, its attention layers chosen by fidelity when ``auto`` (logged)."""
    import wandb

    from arr_coc.distill.layers import choose_layers

    if config.teacher != "attention" or config.teacher_layers != "auto":
        return config.teacher_config()
    choice = choose_layers(pipeline, pairs[: config.layer_probe], config.teacher_config())
    rows = [[f"{lo:g}-{hi:g}", fidelity] for (lo, hi), fidelity in choice.fidelity.items()]
    # logged with step 0 (not committed): the training loop logs its steps from 1 on
    run.log({"teacher_layers_table": wandb.Table(columns=["layers", "fidelity"], data=rows)}, commit=False)
    run.summary["teacher_layers"] = list(choice.layers)
    print(f"teacher layers {choice.layers} (fidelity by layers: {choice.fidelity})")
    return config.teacher_config(choice.layers)


def _teacher_shard(run, config: DistillConfig, teacher, pipeline, pairs, shard, maps: Path, progress: bool) -> None:
    import wandb

    from arr_coc.distill.maps import compute_shard, save_shard, shard_path

    records = compute_shard(pipeline.vlm, pairs, shard, teacher, progress)
    path = save_shard(records, shard_path(maps, config.teacher, shard), teacher, len(pairs))
    artifact = wandb.Artifact(
        f"{MAPS_ARTIFACT}-{config.teacher}-{shard[0]}-of-{shard[1]}",
        type=MAPS_ARTIFACT,
        metadata={"teacher": teacher.model_dump(), "shard": list(shard), "pairs": len(pairs), "model": config.model},
    )
    artifact.add_file(str(path))
    run.log_artifact(artifact)
    run.log({"teacher_maps": [_teacher_image(pairs[r.index], r) for r in records[:SHOWN_MAPS]]}, commit=False)


def _teacher_image(pair, record):
    import wandb

    from arr_coc.heatmap import overlay

    return wandb.Image(overlay(pair.image, record.teacher), caption=f"{pair.question} (teacher)")


def _train(run, config: DistillConfig, pipeline, pairs, records, progress: bool) -> Path:
    import wandb

    from arr_coc.provenance import ScorerProvenance
    from arr_coc.training.loop import train_scorer

    if not config.user_data and config.teacher != "labels":
        run.summary.update(_teacher_recall(pairs, records))
    with _encoding_folder(config.out) as folder:
        train, heldout, heldout_set, config = _encoded(config, pipeline, pairs, records, Path(folder), progress)
        result = train_scorer(config, train, heldout, pipeline.vlm.hidden_size, WandbTrainLogger(run), progress)
        result.scorer.calibrate(_calibration(result.scorer, train[:CALIBRATION_SAMPLES], config.teacher_top))
    trained_for = ScorerProvenance.of(pipeline.vlm, vlm=config.model or None)
    out = result.scorer.save(config.out, trained_for=trained_for)
    summary = {"final_loss": result.losses[-1], **flat_recall(result.recall)}
    fidelity = _fidelity_rows(pipeline, result.scorer, heldout_set, config)
    for row in fidelity:
        summary[f"fidelity/{row['variant']}"] = row["fidelity"]
        summary[f"first_token_kl/{row['variant']}"] = row["first_token_kl"]
    run.summary.update(summary)
    columns = list(fidelity[0])
    run.log({"fidelity_table": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in fidelity])})
    artifact = wandb.Artifact(
        ARTIFACT_NAME,
        type="model",
        metadata={"config": config.model_dump(), "trained_for": trained_for.model_dump(), **summary},
        description=f"ARR-COC relevance scorer distilled from the VLM's {config.teacher}",
    )
    artifact.add_dir(str(out))
    run.log_artifact(artifact, aliases=["latest", f"{config.teacher}-steps-{config.steps}"])
    print(format_table(result.recall), file=sys.stdout)
    for row in fidelity:
        print(row, file=sys.stdout)
    return out


def _encoding_folder(out: str) -> tempfile.TemporaryDirectory:
    """A hidden folder in ``out`` for the encoded samples, removed with its files when the ``with`` block ends."""
    Path(out).mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=".encoded-samples-", dir=out)


def _encoded(config: DistillConfig, pipeline, pairs, records, folder: Path, progress: bool):
    """``(train, heldout, heldout_set, config)``: the training and held-out samples written to ``folder`` and read
    back as they are used, the held-out set fidelity is measured on, and the config (feature methods dropped for
    the user's pairs, which are encoded without features)."""
    from arr_coc.distill.data import encoded_pairs
    from arr_coc.distill.store import write_samples
    from arr_coc.selection import FEATURE_METHODS
    from arr_coc.tasks import load_dataset
    from arr_coc.tasks.image_questions import ImageQuestionSet
    from arr_coc.training.data import encoded_samples, processor_grid

    top = config.teacher_top
    if config.user_data:
        cut = min(max(1, round(len(pairs) * (1 - config.heldout_share))), len(pairs) - 1)
        train = write_samples(encoded_pairs(pipeline, pairs[:cut], records[:cut], top, progress), folder / "train")
        held = encoded_pairs(pipeline, pairs[cut:], records[cut:], top, progress, desc="encode held-out")
        heldout = write_samples(held, folder / "heldout")
        config = config.model_copy(update={"methods": [m for m in config.methods if m not in FEATURE_METHODS]})
        heldout_set = ImageQuestionSet([_held_question(p) for p in pairs[cut:]], {}).as_dataset()
        return train, heldout, heldout_set, config
    train = write_samples(encoded_pairs(pipeline, pairs, records, top, progress), folder / "train")
    grid_for = processor_grid(pipeline.vlm.processor)
    heldout_set = load_dataset(config.dataset, "heldout", config.heldout_size, seed=config.seed, grid_for=grid_for)
    held = encoded_samples(pipeline, heldout_set, with_features=True, desc="encode held-out", progress=progress)
    return train, write_samples(held, folder / "heldout"), heldout_set, config


def _held_question(pair):
    """``pair`` as an image question for evaluation, still reading its image file only when used."""
    from arr_coc.tasks.image_questions import ImageFile, ImageFileQuestion, ImageQuestion

    if isinstance(pair.picture, ImageFile):
        return ImageFileQuestion(pair.picture, pair.question, pair.source)
    return ImageQuestion(pair.image, pair.question, pair.source)


@torch.no_grad()
def _calibration(scorer, samples, top_share: float):
    """``auto``'s calibration against the teacher's top tokens (the task's masks for the ``labels`` teacher)."""
    from arr_coc.training.calibration import fit_scorer_calibration
    from arr_coc.training.loss import teacher_top

    maps, targets, cells, explore = [], [], [], []
    for sample in samples:
        scored = scorer.score(sample.image[None], sample.grid, sample.query[None])
        maps.append(scored.relevance[0].flatten().float().cpu())
        cells.append(scored.cells[0].float().cpu())
        explore.append(float(scored.explore[0]))
        target = sample.target if sample.teacher is None else teacher_top(sample.teacher[None], top_share)[0]
        targets.append(target.flatten().float())
    return fit_scorer_calibration(maps, targets, cells, explore)


def _teacher_recall(pairs, records) -> dict[str, float]:
    """The teacher's own top-K recall of the labelled target tokens, per budget (pairs with a target)."""
    from arr_coc.metrics import recall_at_budget

    totals = dict.fromkeys(TEACHER_RECALL_BUDGETS, 0.0)
    counted = 0
    for pair, record in zip(pairs, records):
        if pair.target is None or not pair.target.any():
            continue
        counted += 1
        flat = record.teacher.flatten()
        for budget in TEACHER_RECALL_BUDGETS:
            k = max(1, round(budget * flat.numel()))
            totals[budget] += recall_at_budget(flat.topk(k).indices, pair.target)
    return {f"teacher_recall@{round(b * 100)}": v / max(1, counted) for b, v in totals.items()}


def _fidelity_rows(pipeline, scorer, heldout_set, config: DistillConfig) -> list[dict[str, Any]]:
    """Answer fidelity and first-token KL of ``arr-coc`` at :data:`FIDELITY_BUDGETS`, both stages, with the
    new scorer, on the held-out samples (the user's held-out pairs, or the task's held-out split)."""
    from arr_coc.evaluation import evaluate_variant, reference_answers, summarize
    from arr_coc.variants import ad_hoc
    from arr_coc.vlm.pipeline import VLMPipeline

    distilled = VLMPipeline(pipeline.vlm, scorer, decode="eager")
    references = reference_answers(distilled, heldout_set, batch_size=8, max_new_tokens=config.answer_tokens)
    rows = []
    for stage in ("post", "pre"):
        for budget in FIDELITY_BUDGETS:
            variant = ad_hoc("arr-coc", budget, stage)
            records = list(
                evaluate_variant(
                    distilled,
                    variant,
                    heldout_set,
                    batch_size=8,
                    max_new_tokens=config.answer_tokens,
                    seed=config.seed,
                    references=references,
                )
            )
            summary = summarize(records, 1.0)
            row = {"variant": variant.name, "stage": stage, "budget": budget}
            row.update({k: float(summary[k]) for k in ("fidelity", "first_token_kl", "recall")})
            if "accuracy" in summary:
                row["accuracy"] = float(summary["accuracy"])
            rows.append(row)
    return rows
