"""``arr-coc eval`` as a W&B job (``job_type="eval"``, ``group`` = the variant).

The run config is ``variant.as_config()`` plus the model and the evaluation
parameters, so every variant's runs meet on the same panels; ``run.summary``
holds what parallel-coordinates panels read: accuracy, recall, kept tokens and
ratio, latency p50/p95 (total and per stage), throughput, US$ per 1,000 answers
(``cost_per_1k_answers``: each answer's share of its batch's time, priced as the
instance time of :mod:`arr_coc.pricing`); with ``fidelity`` also
answer fidelity and first-token KL against the model's own all-token answers (answered
first, a second pass over the samples). History: one row per
sample (correct, recall, kept ratio, latency by stage, agreement and KL with
``fidelity``); a table of the first examples with their relevance heatmaps.

Which variant: ``--variant NAME`` takes a registered one; ``--method``/``--budget``
(alone or on top of a variant) make an ad-hoc ``method@budget`` one, ``--stage pre`` a
pre-encoder one (``method@budget@pre``). A Launch
override of ``variant`` alone picks that variant whole; overrides of ``method``
``budget`` or ``stage`` act like the flags.
"""

from __future__ import annotations

import sys
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from arr_coc.adaptive import AutoBudget, auto_budget
from arr_coc.errors import EmptyDatasetError, InvalidBudgetError, InvalidConfigError
from arr_coc.selection import as_budget
from arr_coc.tasks import check_dataset
from arr_coc.training.config import validate
from arr_coc.variants import Variant, ad_hoc, get_variant
from arr_coc.vocabulary import COVERAGE_MEANING
from training_hooks.jobs.jobrun import declare_launch_inputs, finishing, launch_overrides, resolve_mode, start_run

EXAMPLES = 16  # samples with heatmaps in the examples table


class EvalParams(BaseModel):
    """The parameters of one evaluation (flags, or Launch overrides of the run config)."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    variant: str = ""
    method: str = ""
    budget: int | float | Literal["auto"] | None = None
    coverage: float | None = Field(
        None, description=f"with an 'auto' budget: {COVERAGE_MEANING} (default: the library's)"
    )
    stage: str = ""
    dataset: str = "vqa"
    size: int = Field(64, ge=1, description="samples in the held-out split")
    limit: int | None = Field(None, description="evaluate only the first N samples")
    seed: int = Field(0, ge=0)
    image_size: int = Field(336, ge=56)
    batch_size: int = Field(1, ge=1)
    max_new_tokens: int = Field(8, ge=1)
    model: str = ""
    scorer: str = ""
    fidelity: bool = Field(False, description="also log answer fidelity against the all-token answers")


def resolve_variant(params: EvalParams) -> Variant:
    """The variant ``params`` describe (typed errors for unknown names, methods, bad budgets, datasets)."""
    check_dataset(params.dataset)
    base = get_variant(params.variant) if params.variant else None
    method = params.method or (base.method if base else "")
    budget = params.budget if params.budget is not None else (base.budget if base else None)
    if not method or budget is None:
        raise InvalidConfigError("name a --variant, or a --method with a --budget", field="variant")
    if params.coverage is not None:
        if not isinstance(as_budget(budget), AutoBudget):
            raise InvalidBudgetError("coverage applies to budget 'auto' only", field="coverage")
        budget = auto_budget(params.coverage)
    stage = params.stage or (base.stage if base else "post")
    if base is not None and (base.method, base.budget, base.stage) == (method, budget, stage):
        variant = base
    else:
        variant = ad_hoc(method, budget, stage)
    scorer = params.scorer or variant.scorer
    return variant.model_copy(update={"scorer": scorer, "vlm": params.model or variant.vlm})


def apply_overrides(values: dict[str, Any], overrides: dict[str, Any]) -> EvalParams:
    """``values`` with ``overrides`` on top; a new ``variant`` alone drops the old method/budget/stage."""
    merged = dict(values)
    if "variant" in overrides and not {"method", "budget", "stage"} & set(overrides):
        merged.update(method="", budget=None, stage="")
    merged.update(overrides)
    return validate(EvalParams, merged)


def run_config(variant: Variant, params: EvalParams) -> dict[str, Any]:
    """The W&B run config: the variant, the model, and the evaluation parameters."""
    extra = params.model_dump(exclude={"variant", "method", "budget", "coverage", "stage", "scorer"})
    return variant.as_config(**extra)


def run_eval_job(values: dict[str, Any], *, wandb_mode: str = "auto", device: str = "auto", dtype: str = "auto") -> int:
    """Resolve the variant, evaluate it on ``device`` in ``dtype`` (names of :mod:`arr_coc.vocabulary`), log;
    returns the exit code (0)."""
    from arr_coc.vlm.loading import resolved_names

    params = validate(EvalParams, values)
    resolve_variant(params)  # bad flags are reported as such, before overrides
    params = apply_overrides(params.model_dump(), launch_overrides())
    variant = resolve_variant(params)
    if params.limit is not None and params.limit < 1:
        raise EmptyDatasetError(f"limit must be >= 1, got {params.limit}: nothing to evaluate", field="limit")
    run = start_run(
        job_type="eval",
        config={**run_config(variant, params), **resolved_names(device, dtype)},
        mode=resolve_mode(wandb_mode),
        group=variant.name,
        name=f"eval-{variant.name}",
        tags=(variant.method,),
    )
    with finishing(run):
        declare_launch_inputs(
            run, ["variant", "method", "budget", "stage", "limit", "size", "model", "batch_size", "fidelity"]
        )
        summary = _evaluate_and_log(run, variant, params, device, dtype)
    shown = ("samples", "accuracy", "recall", "fidelity", "first_token_kl", "kept_ratio", "latency_p50_ms")
    shown += ("latency_p95_ms", "throughput_rps")
    printed = ", ".join(f"{key} {summary[key]:.4g}" for key in shown if key in summary)
    print(f"{variant.name}: {printed}", file=sys.stdout)
    return 0


def _evaluate_and_log(run, variant: Variant, params: EvalParams, device: str, dtype: str) -> dict[str, float]:
    import wandb
    from tqdm.auto import tqdm

    from arr_coc.evaluation import (
        Stopwatch,
        cost_per_1k_answers,
        evaluate_variant,
        reference_answers,
        sample_count,
        summarize,
    )
    from arr_coc.heatmap import overlay
    from arr_coc.pricing import get_pricing_settings
    from arr_coc.tasks import load_dataset
    from arr_coc.training.data import processor_grid
    from arr_coc.vlm.pipeline import VLMPipeline

    pipeline = VLMPipeline.from_pretrained(
        params.model or None, scorer=variant.scorer or None, device=device, dtype=dtype
    )
    dataset = load_dataset(
        params.dataset,
        "heldout",
        params.size,
        seed=params.seed,
        image_size=params.image_size,
        grid_for=processor_grid(pipeline.vlm.processor),
    )
    count = sample_count(dataset, params.limit)
    table = wandb.Table(columns=["question", "expected", "answer", "correct", "recall", "kept", "heatmap"])
    records = []
    settings = {"limit": count, "batch_size": params.batch_size, "max_new_tokens": params.max_new_tokens}
    references = reference_answers(pipeline, dataset, **settings, seed=params.seed) if params.fidelity else None
    clock = Stopwatch()  # after the reference pass: throughput is the variant's own
    stream = evaluate_variant(pipeline, variant, dataset, **settings, seed=params.seed, references=references)
    for record in tqdm(stream, total=count, desc=f"eval {variant.name}", leave=False):
        records.append(record)
        result = record.result
        row = {
            "eval/correct": float(record.correct),
            "eval/recall": record.recall,
            "eval/kept_ratio": result.kept_ratio,
            "eval/kept_tokens": result.kept_tokens,
        }
        row.update({f"eval/latency_ms/{stage}": ms for stage, ms in result.timings_ms.items()})
        if record.agrees is not None:
            row.update({"eval/agrees": float(record.agrees), "eval/first_token_kl": record.first_token_kl})
        run.log(row, step=record.index)
        if record.index < EXAMPLES:
            heatmap = overlay(record.sample.image, result.relevance, result.kept)
            table.add_data(
                record.sample.question,
                record.sample.answer,
                result.answer,
                record.correct,
                record.recall,
                result.kept_tokens,
                wandb.Image(heatmap),
            )
    summary = summarize(records, clock.elapsed_s)
    instance = get_pricing_settings().instance(on_gpu=pipeline.vlm.device.type == "cuda")
    summary["cost_per_1k_answers"] = cost_per_1k_answers(records, instance.dollars_per_s)
    run.config.update({"pricing": instance.model_dump()}, allow_val_change=True)
    run.log({"examples": table})
    run.summary.update(summary)
    return summary
