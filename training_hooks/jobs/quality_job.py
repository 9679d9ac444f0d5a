"""``arr-coc quality``: the quality table, every method at every budget on the held-out split.

One pipeline (the embedded default unless ``--model``/``--scorer`` say otherwise)
answers the same held-out samples of the synthetic VQA task for ``full`` and each
method at each budget, at each stage the method supports (``post``: selection on
the vision tower's outputs; ``pre``: before the tower, for :data:`arr_coc.vocabulary.PRE_METHODS`).
The default budgets, :data:`BUDGETS`, are the built-in variants' fixed ratios
(3, 5, 10, 25 and 50 %) and ``auto``.

``auto`` rows: every method gets one, at every stage it supports. An ``auto`` budget
is a per-image *count*, which :func:`arr_coc.selection.resolve_budget` computes from
the calibrated relevance of the scorer that the pipeline runs for every method; the
method then chooses that many tokens its own way. The count depends only on the
image, the question and the coverage, never on the method, so ``uniform@auto``,
``random@auto``, ``divprune@auto`` and ``cdpruner@auto`` keep exactly as many tokens
per image as ``arr-coc-auto``: a matched-count control that separates *how many*
tokens a question needs (the scorer's count) from *which* ones (the method). Only
arr-coc has registered auto variants (``arr-coc-auto``, ``arr-coc-pre-auto``); the
other methods' auto rows take the service's ad-hoc names (``uniform@auto``,
``uniform@auto@pre``, ...), and a coverage other than the served one is spelled out
(``arr-coc@auto(coverage=0.9)``). ``--methods``/``--budgets`` narrow the rows.

Every row also has answer fidelity, which needs no labels: the share of answers equal
to the same model's all-token answers (the ``full`` row's, answered first), and the mean
``KL(p_full || p_pruned)`` of the first answer token (:mod:`arr_coc.evaluation`). With
``fidelity`` and ``images`` or ``questions`` the table is computed on the user's own
questions instead of the task (:mod:`training_hooks.jobs.question_sets`): fidelity,
kept tokens and latency, no accuracy or recall.

Each variant becomes a W&B eval run (``job_type=eval``,
``group`` = variant, the summary of :func:`arr_coc.evaluation.summarize` plus
accuracy per question kind), so ``arr-coc compare`` and dashboards read them like
any ``arr-coc eval`` run. The table is printed, and written to ``out`` as
``quality.md`` and ``quality.json`` with ``accuracy_vs_kept_ratio.png`` (one line
per method and stage, on a log kept-ratio axis so the 3 % and 5 % points stay
apart; auto points are labelled; none without answers) and ``fidelity_vs_kept_ratio.png``.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from arr_coc.adaptive import AUTO, DEFAULT_COVERAGE, AutoBudget, auto_budget
from arr_coc.selection import FEATURE_METHODS, check_method, check_stage, resolve_budget
from arr_coc.tasks import check_dataset
from arr_coc.tasks.image_questions import DEFAULT_PROMPT
from arr_coc.training.config import validate
from arr_coc.variants import VARIANTS, Variant, ad_hoc, get_variant
from arr_coc.vocabulary import PRUNING_METHODS, QUESTION_KINDS, STAGES
from training_hooks.comparison.plots import PALETTE, Series, scatter_plot
from training_hooks.jobs.jobrun import resolve_mode, start_run
from training_hooks.jobs.question_sets import check_question_source, label_free, question_source_name

BUDGETS = (0.03, 0.05, 0.1, 0.25, 0.5, AUTO)
COLUMNS = ("accuracy", "recall", "fidelity", "first_token_kl", "kept_tokens_mean", "kept_ratio", "latency_p50_ms")
# the accuracy plot's kept-ratio axis: log scale, so the small budgets are readable
PLOT_XRANGE = (0.02, 1.0)
PLOT_XTICKS = (0.03, 0.05, 0.1, 0.25, 0.5, 1.0)
PLOT_TITLES = {
    "accuracy": "Accuracy vs kept visual tokens (held-out synthetic VQA)",
    "fidelity": "Answer fidelity vs kept visual tokens (answers equal to all tokens')",
}


class QualityParams(BaseModel):
    """What the table is computed over."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    dataset: str = "vqa"
    split: str = Field("heldout", description="heldout for the table; train (with a seed training did not use) to tune")
    size: int = Field(300, ge=1, description="held-out samples, or at most this many of the user's questions")
    fidelity: bool = Field(False, description="fidelity on the user's questions (images or questions), no answers")
    images: str = Field("", description="a folder of images to ask questions about")
    questions: str = Field("", description="a JSONL question file")
    self_questions: int = Field(0, ge=0, description="questions the VLM writes per image (0: the task's templates)")
    question_prompt: str = Field(DEFAULT_PROMPT, min_length=1, description="what the VLM is asked; {n} = how many")
    question_tokens: int = Field(128, ge=1, description="max new tokens of the VLM's questions")
    max_new_tokens: int = Field(4, ge=1, description="max new tokens of each answer")
    seed: int = Field(0, ge=0)
    batch_size: int = Field(8, ge=1)
    methods: list[str] = Field(list(PRUNING_METHODS), min_length=1)
    budgets: list[float | Literal["auto"]] = Field(list(BUDGETS), min_length=1)
    coverages: list[float] = Field([DEFAULT_COVERAGE], min_length=1, description="coverages of the 'auto' budget")
    stages: list[str] = Field(list(STAGES), min_length=1)
    model: str = ""
    scorer: str = ""
    out: str = "quality"

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: list[str]) -> list[str]:
        return [check_method(m) for m in methods]

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, stages: list[str]) -> list[str]:
        return [check_stage(stage, "none") for stage in stages]

    @field_validator("budgets")
    @classmethod
    def _valid_budgets(cls, budgets: list) -> list:
        for budget in budgets:
            resolve_budget(budget if budget == AUTO else float(budget), 1)
        return budgets

    @field_validator("coverages")
    @classmethod
    def _valid_coverages(cls, coverages: list[float]) -> list[float]:
        for coverage in coverages:
            auto_budget(coverage)
        return coverages


def quality_variants(params: QualityParams) -> list[Variant]:
    """``full`` then each method at each budget and stage it supports (registered variants where they exist).

    ``auto`` budgets give one variant per coverage.
    """
    variants = [get_variant("full")]
    for stage in params.stages:
        for method in params.methods:
            if stage == "pre" and method in FEATURE_METHODS:
                continue
            infix = "-pre" if stage == "pre" else ""
            for budget in params.budgets:
                if budget == AUTO:
                    budgets = [auto_budget(coverage) for coverage in params.coverages]
                    names = [f"{method}{infix}-auto"] * len(budgets)
                else:
                    budgets, names = [budget], [f"{method}{infix}-{round(budget * 100)}"]
                for name, value in zip(names, budgets):
                    variant = VARIANTS.get(name)
                    if variant is None or (variant.method, variant.budget, variant.stage) != (method, value, stage):
                        variant = ad_hoc(method, value, stage)
                    variants.append(variant)
    return variants


def per_kind_accuracy(records) -> dict[str, float]:
    """``accuracy/<kind>`` and ``kept_ratio/<kind>`` for each question kind present in ``records``
    (samples with a kind and an answer)."""
    right: dict[str, list[bool]] = defaultdict(list)
    kept: dict[str, list[float]] = defaultdict(list)
    for record in records:
        if not (record.sample.kind and record.sample.answer):
            continue
        right[record.sample.kind].append(record.correct)
        kept[record.sample.kind].append(record.result.kept_ratio)
    return {
        **{f"accuracy/{kind}": sum(v) / len(v) for kind, v in sorted(right.items())},
        **{f"kept_ratio/{kind}": sum(v) / len(v) for kind, v in sorted(kept.items())},
    }


def _cell(row: dict[str, Any], key: str, spec: str) -> str:
    return format(row.get(key, float("nan")), spec)


LABEL_COLUMNS = (
    ("accuracy", "accuracy", ".3f"),
    *((f"acc. {k}", f"accuracy/{k}", ".3f") for k in QUESTION_KINDS),
    ("target recall", "recall", ".3f"),
)
FIDELITY_COLUMNS = (("fidelity", "fidelity", ".3f"), ("first-token KL", "first_token_kl", ".4f"))
TOKEN_COLUMNS = (
    ("kept tokens", "kept_tokens_mean", ".1f"),
    ("kept ratio", "kept_ratio", ".3f"),
    ("kept ratio p95", "kept_ratio_p95", ".3f"),
)
KIND_KEPT_COLUMNS = tuple((f"kept {k}", f"kept_ratio/{k}", ".3f") for k in QUESTION_KINDS)
LATENCY_COLUMNS = (("latency p50 ms", "latency_p50_ms", ".0f"),)


def format_markdown(rows: list[dict[str, Any]]) -> str:
    """The table as GitHub markdown: one row per variant (``nan`` where a row lacks a value).

    Rows with answers get accuracy (overall and per kind) and target recall; rows of
    questions without answers only fidelity, kept tokens and latency.
    """
    labelled = any("accuracy" in row for row in rows)
    if labelled:
        columns = LABEL_COLUMNS + FIDELITY_COLUMNS + TOKEN_COLUMNS + KIND_KEPT_COLUMNS + LATENCY_COLUMNS
    else:
        columns = FIDELITY_COLUMNS + TOKEN_COLUMNS + LATENCY_COLUMNS
    header = ["variant", "method", "stage", "budget", *(name for name, _, _ in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        budget = row["budget"] if isinstance(row["budget"], str) else f"{row['budget']:g}"
        cells = [row["variant"], row["method"], row.get("stage", "post"), budget]
        cells += [_cell(row, key, spec) for _, key, spec in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_xrange(rows: list[dict[str, Any]]) -> tuple[float, float]:
    """:data:`PLOT_XRANGE`, its left end lowered to show a row kept below it (log axis: positive)."""
    ratios = [row["kept_ratio"] for row in rows if 0 < row["kept_ratio"] < PLOT_XRANGE[0]]
    return (min([PLOT_XRANGE[0], *(r / 1.25 for r in ratios)]), PLOT_XRANGE[1])


def accuracy_plot(rows: list[dict[str, Any]], path: Path, metric: str = "accuracy") -> Path:
    """``metric`` (accuracy, or fidelity) vs kept ratio, one line per method and stage; ``full`` drawn as its
    own point at 1.0. Rows without ``metric`` are left out.

    The kept-ratio axis is logarithmic, ticked at :data:`PLOT_XTICKS` as percents; ``auto`` points
    are labelled with their budget.
    """
    by_method: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for row in rows:
        if metric not in row:
            continue
        stage = row.get("stage", "post")
        label = row["method"] if stage == "post" or row["method"] == "none" else f"{row['method']} (pre)"
        note = row["budget"] if isinstance(row.get("budget"), str) else ""
        by_method[label].append((row["kept_ratio"], row[metric], note))
    full = by_method.pop("none", [])
    series = []
    for i, (method, points) in enumerate(sorted(by_method.items())):
        points = sorted(points + full)
        series.append(
            Series(
                method,
                [(x, y) for x, y, _ in points],
                labels=[note for _, _, note in points],
                colour=PALETTE[i % len(PALETTE)],
                marker=("circle", "square", "triangle")[i % 3],
            )
        )
    return scatter_plot(
        series,
        path,
        title=PLOT_TITLES[metric],
        xlabel="kept ratio (log scale)",
        ylabel=metric,
        xrange=plot_xrange(rows),
        yrange=(0.0, 1.0),
        xscale="log",
        xticks=PLOT_XTICKS,
        xpercent=True,
    )


def run_quality_job(
    values: dict[str, Any], *, wandb_mode: str = "auto", device: str = "auto", dtype: str = "auto"
) -> int:
    """Evaluate every variant on ``device`` in ``dtype``, log one W&B eval run each, write the table and plot;
    exit code 0."""
    from arr_coc.vlm.loading import resolved_names

    params = validate(QualityParams, values)
    check_dataset(params.dataset)
    check_question_source(params)
    variants = quality_variants(params)
    rows = evaluate_all(params, variants, resolve_mode(wandb_mode), **resolved_names(device, dtype))
    out = Path(params.out)
    out.mkdir(parents=True, exist_ok=True)
    table = format_markdown(rows)
    (out / "quality.md").write_text(table + "\n")
    (out / "quality.json").write_text(json.dumps({"params": params.model_dump(), "rows": rows}, indent=2) + "\n")
    plots = [accuracy_plot(rows, out / "fidelity_vs_kept_ratio.png", "fidelity")]
    if not label_free(params):
        plots.insert(0, accuracy_plot(rows, out / "accuracy_vs_kept_ratio.png"))
    print(table, file=sys.stdout)
    print(f"wrote {out / 'quality.md'}, {out / 'quality.json'}, " + ", ".join(map(str, plots)))
    return 0


def evaluate_all(params: QualityParams, variants: list[Variant], mode: str, device: str, dtype: str) -> list[dict]:
    from tqdm.auto import tqdm

    from arr_coc.evaluation import Stopwatch, add_fidelity, evaluate_variant, summarize
    from arr_coc.tasks import load_dataset
    from arr_coc.training.data import processor_grid
    from arr_coc.vlm.pipeline import VLMPipeline
    from training_hooks.jobs.question_sets import question_dataset, read_question_source

    questions = read_question_source(params) if label_free(params) else None  # files first, then the model
    pipeline = VLMPipeline.from_pretrained(
        params.model or None, scorer=params.scorer or None, device=device, dtype=dtype
    )
    if questions is not None:
        dataset = question_dataset(params, questions, pipeline)
        source = {"dataset": "questions", "questions": params.questions or params.images}
        source["question_source"] = question_source_name(params)
    else:
        dataset = load_dataset(
            params.dataset, params.split, params.size, seed=params.seed, grid_for=processor_grid(pipeline.vlm.processor)
        )
        source = {"dataset": params.dataset, "split": params.split}
    references = None  # the full row's answers, answered first
    rows = []
    for variant in variants:
        clock = Stopwatch()
        stream = evaluate_variant(
            pipeline,
            variant,
            dataset,
            batch_size=params.batch_size,
            max_new_tokens=params.max_new_tokens,
            seed=params.seed,
            references=references,
            first_token_logprobs=True,
        )
        records = list(tqdm(stream, total=len(dataset), desc=f"quality {variant.name}", leave=False))
        if references is None:
            references = [record.result for record in records]
            add_fidelity(records, references)
        summary = {**summarize(records, clock.elapsed_s), **per_kind_accuracy(records)}
        config = variant.as_config(
            **source,
            size=len(dataset),
            seed=params.seed,
            model=params.model or "embedded",
            scorer=params.scorer or "embedded",
            device=device,
            dtype=dtype,
        )
        run = start_run(
            job_type="eval",
            config=config,
            mode=mode,
            group=variant.name,
            name=f"quality-{variant.name}",
            tags=(variant.method, variant.stage, "quality"),
        )
        run.summary.update(summary)
        run.finish()
        budget = (
            f"auto@{variant.budget.coverage:g}" if isinstance(variant.budget, AutoBudget) else float(variant.budget)
        )
        rows.append(
            {"variant": variant.name, "method": variant.method, "stage": variant.stage, "budget": budget, **summary}
        )
    return rows
