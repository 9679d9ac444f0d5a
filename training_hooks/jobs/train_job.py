"""``arr-coc train-scorer`` as a W&B job (``job_type="train"``).

Parameters: defaults < ``--config`` file < flags < Launch overrides, validated
as :class:`arr_coc.training.config.TrainConfig`, logged as the run config and
read back from ``wandb.config``. The VLM stays frozen: its processor and input
embeddings are run once per sample (``arr_coc.training.data``), then the scorer
trains alone. Logged: per-step loss, its parts, learning rate and gradient norms;
heatmap images; held-out recall@budget of every method (history, summary and a
table). The checkpoint goes to ``out`` and into a ``model`` artifact named
``relevance-scorer``, recording the VLM it was trained for (``trained_for``,
:mod:`arr_coc.provenance`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from PIL import Image

from arr_coc.training.audit import training_starts
from arr_coc.training.config import TrainConfig, load_config_file, train_config
from arr_coc.training.recall import RecallTable, flat_recall, format_table
from training_hooks.jobs.jobrun import (
    declare_launch_inputs,
    finishing,
    launch_overrides,
    resolve_mode,
    run_config,
    start_run,
)

ARTIFACT_NAME = "relevance-scorer"


class WandbTrainLogger:
    """:class:`arr_coc.training.loop.TrainLogger` that logs into a W&B run."""

    def __init__(self, run) -> None:
        self.run = run

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def heatmaps(self, panels: list[tuple[Image.Image, str]], step: int) -> None:
        import wandb

        self.run.log({"heatmaps": [wandb.Image(image, caption=caption) for image, caption in panels]}, step=step)

    def recall(self, table: RecallTable, step: int) -> None:
        import wandb

        rows = [[method, budget, value] for method, row in table.items() for budget, value in row.items()]
        metrics: dict[str, Any] = dict(flat_recall(table))
        metrics["recall_table"] = wandb.Table(columns=["method", "budget", "recall"], data=rows)
        self.run.log(metrics, step=step)


def resolve_config(config_file: str | None, cli_values: dict[str, Any]) -> TrainConfig:
    """Defaults < file < flags < Launch overrides, validated (errors before any W&B or model work)."""
    file_values = load_config_file(config_file) if config_file else {}
    train_config(file_values, cli_values)  # a bad file or flag is reported as such, before overrides
    return train_config(file_values, cli_values, launch_overrides())


def summary_values(config: TrainConfig, table: RecallTable, losses: list[float]) -> dict[str, float]:
    """Final loss, every recall, and arr-coc's gain over each baseline at each budget."""
    values = {"final_loss": losses[-1], **flat_recall(table)}
    if "arr-coc" in table:
        for method, row in table.items():
            if method != "arr-coc":
                for budget, recall in row.items():
                    values[f"recall_gain/{method}@{round(budget * 100)}"] = table["arr-coc"][budget] - recall
    return values


def run_train_job(
    config_file: str | None,
    cli_values: dict[str, Any],
    *,
    wandb_mode: str = "auto",
    device: str = "auto",
    progress: bool = True,
) -> int:
    """Resolve the parameters, train (in float32, on ``device``), save, log; returns the exit code (0)."""
    from arr_coc.vlm.loading import resolved_names

    config = resolve_config(config_file, cli_values)
    training_starts("train-scorer")
    mode = resolve_mode(wandb_mode)
    run = start_run(
        job_type="train",
        config={**config.model_dump(), **resolved_names(device, "float32")},
        mode=mode,
        group="scorer-training",
    )
    with finishing(run):
        declare_launch_inputs(run, list(TrainConfig.model_fields))
        config = train_config(config.model_dump(), run_config(run, TrainConfig.model_fields))
        result_dir = _train_and_log(run, config, device, progress)
    print(f"checkpoint: {result_dir}")
    return 0


def _train_and_log(run, config: TrainConfig, device: str, progress: bool) -> Path:
    import wandb

    from arr_coc.provenance import ScorerProvenance
    from arr_coc.tasks import load_dataset
    from arr_coc.training.data import encode_dataset, processor_grid
    from arr_coc.training.loop import train_scorer
    from arr_coc.vlm.pipeline import VLMPipeline

    pipeline = VLMPipeline.from_pretrained(config.model or None, device=device, dtype="float32")  # trains in float32
    grid_for = processor_grid(pipeline.vlm.processor)
    common = dict(seed=config.seed, image_size=config.image_size, grid_for=grid_for)
    train_set = load_dataset(config.dataset, "train", config.train_size, **common)
    heldout_set = load_dataset(config.dataset, "heldout", config.heldout_size, **common)
    train = encode_dataset(pipeline, train_set, desc="encode train", progress=progress)
    heldout = encode_dataset(pipeline, heldout_set, with_features=True, desc="encode held-out", progress=progress)
    result = train_scorer(config, train, heldout, pipeline.vlm.hidden_size, WandbTrainLogger(run), progress)

    trained_for = ScorerProvenance.of(pipeline.vlm)
    out = result.scorer.save(config.out, trained_for=trained_for)
    summary = summary_values(config, result.recall, result.losses)
    run.summary.update(summary)
    artifact = wandb.Artifact(
        ARTIFACT_NAME,
        type="model",
        metadata={"config": config.model_dump(), "trained_for": trained_for.model_dump(), **summary},
        description="ARR-COC relevance scorer (config.json + model.safetensors)",
    )
    artifact.add_dir(str(out))
    run.log_artifact(artifact, aliases=["latest", f"steps-{config.steps}"])
    print(format_table(result.recall), file=sys.stdout)
    return out
