"""The W&B run of a job that finishes (train-scorer, eval): mode, Launch overrides, start.

Mode (``--wandb``, default ``auto``): ``auto`` follows ``WANDB_MODE`` when set,
else logs ``online`` with ``WANDB_API_KEY`` and ``offline`` without one (run
files under ``WANDB_DIR``, ``wandb sync`` uploads them later); ``ARR_COC_WANDB=0``
turns tracking off. A missing key is never an error, and a W&B that fails to
start leaves the job running with a disabled run.

Launch: a W&B Launch agent starts the job with ``WANDB_LAUNCH=true`` and the
run-config overrides chosen in the Launch drawer in ``WANDB_CONFIG`` (JSON, or
``WANDB_CONFIG_0``, ``_1``... shards). :func:`launch_overrides` reads them before
``wandb.init`` so the job validates them and names its run group after them;
``wandb.init`` applies the same overrides to ``wandb.config``, and the job reads
its parameters back from there (:func:`run_config`), which also covers sweeps.
:func:`declare_launch_inputs` tells W&B which config keys a job built from this
run may override (``wandb.sdk.launch.manage_wandb_config``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from arr_coc.errors import InvalidConfigError
from training_hooks.tracking.settings import get_tracking_settings
from training_hooks.tracking.tracker import env_switch

log = logging.getLogger(__name__)

MODES = ("auto", "online", "offline", "off")


def resolve_mode(requested: str = "auto", env: Mapping[str, str] | None = None) -> str:
    """``online``, ``offline`` or ``disabled`` for a job run, from ``--wandb`` and the environment."""
    env = os.environ if env is None else env
    if requested not in MODES:
        raise InvalidConfigError(f"unknown W&B mode {requested!r}; use one of {', '.join(MODES)}", field="wandb")
    if requested == "off":
        return "disabled"
    if requested != "auto":
        return requested
    if env_switch("ARR_COC_WANDB", env) is False:
        return "disabled"
    mode = env.get("WANDB_MODE", "").strip().lower()
    if mode in ("online", "offline", "disabled"):
        return mode
    if mode == "dryrun":
        return "offline"
    return "online" if env.get("WANDB_API_KEY", "").strip() else "offline"


def launched(env: Mapping[str, str] | None = None) -> bool:
    """Whether a W&B Launch agent started this process (``WANDB_LAUNCH`` is true)."""
    env = os.environ if env is None else env
    return env_switch("WANDB_LAUNCH", env) is True


def launch_overrides(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The run-config overrides of a Launch run (``{}`` when not launched); bad JSON is an error."""
    env = os.environ if env is None else env
    if not launched(env):
        return {}
    text = env.get("WANDB_CONFIG")
    if text is None:
        shards = []
        while f"WANDB_CONFIG_{len(shards)}" in env:
            shards.append(env[f"WANDB_CONFIG_{len(shards)}"])
        text = "".join(shards) if shards else None
    if text is None:
        return {}
    try:
        overrides = json.loads(text)
    except ValueError as error:
        raise InvalidConfigError(f"WANDB_CONFIG is not JSON: {error}", field="WANDB_CONFIG") from error
    if not isinstance(overrides, dict):
        raise InvalidConfigError("WANDB_CONFIG must be a JSON object", field="WANDB_CONFIG")
    return overrides


def start_run(
    *,
    job_type: str,
    config: Mapping[str, Any],
    mode: str,
    group: str | None = None,
    name: str | None = None,
    tags: tuple[str, ...] = (),
):
    """``wandb.init`` for a job; a failing init falls back to a disabled run (logged, never raised)."""
    import wandb

    kwargs = dict(
        project=get_tracking_settings().wandb_project,
        job_type=job_type,
        group=group,
        name=name,
        tags=list(tags),
        config=dict(config),
        reinit="finish_previous",
    )
    try:
        return wandb.init(mode=mode, **kwargs)
    except Exception as error:  # W&B down, bad credentials, ...: the job itself must go on
        log.warning("W&B run could not start (%s); continuing with tracking off", error)
        return wandb.init(mode="disabled", **kwargs)


@contextmanager
def finishing(run) -> Iterator[None]:
    """Finish ``run`` when the block ends: exit code 0, or 1 when it raised (the error goes on)."""
    try:
        yield
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()


def declare_launch_inputs(run, keys: list[str]) -> None:
    """Make ``keys`` of ``wandb.config`` the overridable inputs of a Launch job made from ``run``.

    A disabled run (``--wandb off``, or a W&B that failed to start) makes no job, so
    there is nothing to declare and nothing to warn about.
    """
    if getattr(run, "disabled", False):
        return
    try:
        from wandb.sdk.launch import manage_wandb_config

        manage_wandb_config(include=keys)
    except Exception as error:  # only job metadata: never worth failing the job
        log.warning("could not declare the Launch inputs: %r", error)


def run_config(run, keys) -> dict[str, Any]:
    """The values of ``keys`` in the run's config (after Launch/sweep overrides)."""
    config = dict(run.config)
    return {key: config[key] for key in keys if key in config}
