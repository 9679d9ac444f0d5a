"""``arr-coc calibrate``: fit a scorer's calibration for ``auto`` budgets on the training split.

Scores ``--size`` fresh training-split samples of the synthetic VQA task (``--seed``
other than the one training used), fits Platt scaling of relevance to "is a target
token" (:func:`arr_coc.adaptive.fit_calibration`) and the coverage table that turns
``coverage`` into a probability threshold (:func:`arr_coc.adaptive.fit_coverage_table`,
through the order in which ``arr-coc``'s selection keeps the tokens),
writes both into the scorer checkpoint (with the VLM it is calibrated beside as
its ``trained_for`` record when it had none; one recording another VLM is refused),
and prints, per coverage, the mean share of
target tokens kept and the mean kept ratio on those samples when ``arr-coc`` selects
that many tokens (relevance balanced against coverage, as served): what ``coverage``
means for this scorer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

COVERAGES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


class CalibrateConfig(BaseModel):
    """What a calibration draws: the flags' defaults, and the keys of a recipe's calibrate stage config."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(400, ge=1, description="training-split samples to fit on")
    seed: int = Field(11, ge=0, description="a seed training did not draw from")


def coverage_table(
    maps: list, targets: list, calibration, coverages=COVERAGES, cells: list | None = None, explore: list | None = None
) -> list[tuple[float, float, float]]:
    """``(coverage, mean target recall, mean kept ratio)`` of ``arr-coc``'s ``auto`` selection of each ``[N]`` map.

    ``cells`` (``[3, H', W']`` per map) and ``explore`` (a weight per map) are the scorer's; without them
    the selection is the relevance top-K.
    """
    from arr_coc.adaptive import AutoBudget
    from arr_coc.selection import allocate

    cells = cells or [None] * len(maps)
    explore = explore or [0.0] * len(maps)
    rows = []
    for coverage in coverages:
        recalls, ratios = [], []
        for relevance, target, appearance, weight in zip(maps, targets, cells, explore):
            (kept,) = allocate(
                [relevance],
                AutoBudget(coverage=coverage),
                "arr-coc",
                grid=None if appearance is None else [tuple(appearance.shape[1:])],
                cells=None if appearance is None else [appearance],
                explore=weight,
                calibration=calibration,
            )
            k = kept.numel()
            if target.sum() > 0:
                recalls.append(float(target[kept].sum() / target.sum()))
            ratios.append(k / relevance.numel())
        rows.append((coverage, sum(recalls) / max(1, len(recalls)), sum(ratios) / len(ratios)))
    return rows


def calibrate_scorer(
    scorer: str | Path | None = None,
    model: str | Path | None = None,
    size: int = CalibrateConfig.model_fields["size"].default,
    seed: int = CalibrateConfig.model_fields["seed"].default,
    out: str | Path | None = None,
) -> int:
    """Calibrate ``scorer`` (default: the embedded one) beside ``model`` (default: the embedded testbed) on
    ``size`` training-split samples drawn with ``seed``, write it to ``out`` (default: over ``scorer``) and
    print what each coverage keeps; returns the exit code (0). Runs on the CPU."""
    from arr_coc.relevance_model import RelevanceModel
    from arr_coc.tasks.shapes_vqa import ShapesVQA
    from arr_coc.training.calibration import fit_scorer_calibration
    from arr_coc.training.data import processor_grid
    from arr_coc.vlm.testbed import EMBEDDED_MODEL, EMBEDDED_SCORER

    scorer_dir = Path(scorer or EMBEDDED_SCORER)
    relevance = RelevanceModel.from_pretrained(model or EMBEDDED_MODEL, scorer=scorer_dir, device="cpu")
    dataset = ShapesVQA(size, "train", seed=seed, grid_for=processor_grid(relevance.processor))
    maps, targets, cells, explore = [], [], [], []
    for start in range(0, len(dataset), 16):
        samples = [dataset[i] for i in range(start, min(start + 16, len(dataset)))]
        scores = relevance.score([s.image for s in samples], [s.question for s in samples])
        for sample, scored in zip(samples, scores):
            maps.append(scored.relevance.flatten())
            targets.append(sample.target_mask.flatten().float())
            cells.append(scored.cells)
            explore.append(scored.explore)
    before = relevance.scorer.calibration
    calibration = fit_scorer_calibration(maps, targets, cells, explore)
    relevance.scorer.calibrate(calibration)
    out = Path(out) if out else scorer_dir
    relevance.scorer.save(out, trained_for=relevance.scorer.trained_for or relevance.provenance)
    print(
        f"calibration (scale, shift): {before.scale:.3f}, {before.shift:.3f} -> {calibration.scale:.3f}, "
        f"{calibration.shift:.3f}, with a coverage table of {len(calibration.coverage_table)} rows; wrote {out}"
    )
    print(
        f"{'coverage':>8} {'target recall':>13} {'kept ratio':>10}   ({len(maps)} training-split samples, seed {seed})"
    )
    for coverage, recall, ratio in coverage_table(maps, targets, calibration, cells=cells, explore=explore):
        print(f"{coverage:>8.2f} {recall:>13.3f} {ratio:>10.3f}")
    return 0


def run(args: argparse.Namespace) -> int:
    return calibrate_scorer(args.scorer, args.model, args.size, args.seed, args.out)


def register(subparsers) -> None:
    parser = subparsers.add_parser("calibrate", help="fit the scorer's calibration for budget 'auto' (training split)")
    parser.add_argument("--model", help="VLM directory or hub id (default: the embedded trained testbed)")
    parser.add_argument("--scorer", help="scorer checkpoint to calibrate (default: the embedded one, in place)")
    parser.add_argument("--out", help="write the calibrated scorer here instead of over --scorer")
    for name, field in CalibrateConfig.model_fields.items():
        parser.add_argument(f"--{name}", type=int, default=field.default, help=field.description)
    parser.set_defaults(func=run)
