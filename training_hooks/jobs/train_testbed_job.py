"""``arr-coc train-testbed`` as a W&B job (``job_type="train"``, group ``testbed-training``).

Parameters: defaults < ``--config`` file < flags < Launch overrides, validated as
:class:`arr_coc.training.testbed.TrainTestbedConfig`, logged as the run
config and read back from ``wandb.config``. Logged per step: loss, learning rate,
gradient norm, elapsed seconds; at each evaluation the held-out accuracy with all
visual tokens. The checkpoint (a complete Qwen2.5-VL directory) goes to ``out``
and into a ``model`` artifact named ``vqa-testbed``.
"""

from __future__ import annotations

from typing import Any

from arr_coc.training.config import load_config_file
from arr_coc.training.testbed import TrainTestbedConfig, train_testbed_config
from training_hooks.jobs.jobrun import (
    declare_launch_inputs,
    finishing,
    launch_overrides,
    resolve_mode,
    run_config,
    start_run,
)
from training_hooks.jobs.train_job import WandbTrainLogger

ARTIFACT_NAME = "vqa-testbed"


def run_train_testbed_job(
    config_file: str | None, cli_values: dict[str, Any], *, wandb_mode: str = "auto", progress: bool = True
) -> int:
    """Resolve the parameters, train, save, log; returns the exit code (0)."""
    import wandb

    from arr_coc.training.testbed import train_testbed

    file_values = load_config_file(config_file) if config_file else {}
    train_testbed_config(file_values, cli_values)  # a bad file or flag is reported as such, before overrides
    config = train_testbed_config(file_values, cli_values, launch_overrides())
    run = start_run(
        job_type="train",
        config=config.model_dump(),
        mode=resolve_mode(wandb_mode),
        group="testbed-training",
        name=f"train-testbed-seed{config.seed}",
    )
    with finishing(run):
        declare_launch_inputs(run, list(TrainTestbedConfig.model_fields))
        config = train_testbed_config(config.model_dump(), run_config(run, TrainTestbedConfig.model_fields))
        result = train_testbed(config, WandbTrainLogger(run), progress)
        summary = {"final_loss": result.losses[-1], "heldout_accuracy": result.heldout_accuracy}
        run.summary.update(summary)
        artifact = wandb.Artifact(
            ARTIFACT_NAME,
            type="model",
            metadata={"config": config.model_dump(), **summary},
            description="tiny Qwen2.5-VL trained on the synthetic VQA task",
        )
        artifact.add_dir(config.out)
        run.log_artifact(artifact, aliases=["latest", f"seed-{config.seed}"])
    print(f"checkpoint: {config.out} (held-out accuracy with all tokens {result.heldout_accuracy:.3f})")
    return 0
