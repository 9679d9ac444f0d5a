"""How many tokens to keep: the ``auto`` rules against fixed ratios, by target recall at equal kept ratio.

Scores the samples of a training-split validation draw with the embedded scorer, then
keeps each sample's top-K tokens for K from several rules, and prints the mean kept
ratio (and its p95) and the target recall per question template. The rules: ``auto``
through the scorer's fitted coverage table (a probability threshold shared by every
image, what the shipped scorer serves), ``auto`` per image (the fewest top tokens
holding ``coverage`` of the image's own relevance mass, what a scorer without a table
serves) and fixed ratios. No VLM answers are needed: on this task the model answers
what its kept tokens show, so recall at a given kept ratio is what a rule can win or lose.

    python benchmarks/auto_rules.py --size 300 --seed 7
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from arr_coc.adaptive import AutoBudget
from arr_coc.metrics import percentile, recall_at_budget
from arr_coc.scorer import RelevanceScorer
from arr_coc.selection.allocation import resolve_budget
from arr_coc.tasks.shapes_vqa import ShapesVQA
from arr_coc.training.data import encode_sample, processor_grid
from arr_coc.vlm.loading import load_vlm
from arr_coc.vlm.pipeline import VLMPipeline
from arr_coc.vlm.testbed import EMBEDDED_MODEL, EMBEDDED_SCORER

Rule = Callable[[torch.Tensor], int]


def scored_samples(size: int, seed: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor, str]], RelevanceScorer]:
    """Per sample ``(relevance [N], target [N] bool, template kind)``, and the scorer."""
    vlm = load_vlm(EMBEDDED_MODEL, device="cpu", dtype="float32")
    pipeline = VLMPipeline(vlm)
    scorer = RelevanceScorer.load(EMBEDDED_SCORER)
    dataset = ShapesVQA(size, "train", seed, processor_grid(vlm.processor))
    rows = []
    with torch.no_grad():
        for index in range(len(dataset)):
            sample = encode_sample(pipeline, dataset[index], False)
            relevance = scorer(sample.image[None], sample.grid, sample.query[None])[0].float().flatten()
            rows.append((relevance, sample.target.flatten().bool(), sample.kind))
    return rows, scorer


def report(name: str, rule: Rule, rows) -> str:
    ratios, recalls = [], {}
    for relevance, target, kind in rows:
        keep = rule(relevance)
        ratios.append(keep / relevance.numel())
        if target.any():
            recall = recall_at_budget(torch.topk(relevance, keep).indices, target)
            recalls.setdefault(kind, []).append(recall)
            recalls.setdefault("all", []).append(recall)
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    p95 = percentile(ratios, 95)
    cells = " | ".join(f"{mean(recalls[k]):.3f}" for k in ("all", "colour", "shape", "count") if k in recalls)
    return f"| {name} | {mean(ratios):.3f} / {p95:.3f} | {cells} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7, help="training-split seed of the validation draw")
    args = parser.parse_args()
    rows, scorer = scored_samples(args.size, args.seed)
    tabled = scorer.calibration
    per_image = tabled.model_copy(update={"coverage_table": ()})

    def auto(coverage: float, calibration) -> Rule:
        return lambda r: resolve_budget(AutoBudget(coverage=coverage), r.numel(), r, calibration)

    def fixed(ratio: float) -> Rule:
        return lambda r: resolve_budget(ratio, r.numel())

    rules = {f"auto, coverage {c}": auto(c, tabled) for c in (0.8, 0.84, 0.85, 0.86, 0.9)}
    rules |= {f"auto per image, coverage {c}": auto(c, per_image) for c in (0.6, 0.7, 0.75, 0.8)}
    rules |= {f"fixed {r:.0%}": fixed(r) for r in (0.05, 0.06, 0.07, 0.08, 0.1)}
    print(f"training split, seed {args.seed}, {args.size} samples; target recall of the top-K tokens")
    print("| rule | kept ratio (mean / p95) | recall | colour | shape | count |")
    print("|---|---|---|---|---|---|")
    for name, rule in rules.items():
        print(report(name, rule, rows))


if __name__ == "__main__":
    main()
