"""How well scorers find what a question names: top-T recall per question template, and
what the arr-coc selection keeps at small budgets.

    .venv/bin/python benchmarks/scorer_recall.py --scorers arr_coc/assets/vqa-scorer checkpoints/new --size 300

On ``--size`` samples of the held-out split (``--split train --seed N`` for a
validation draw), for each scorer: top-T recall per template (the share of a
question's T target tokens among its T most relevant tokens), then at each budget
the target recall and the object hit rate (the share of the question's objects with
at least one kept token) of ``arr-coc`` (the scorer's exploration weight), of the
relevance top-K alone (exploration 0), and of DivPrune on the VLM's features. Count
questions whose answer is 0 have no targets and are left out.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch

from arr_coc.metrics import recall_at_budget
from arr_coc.scorer import RelevanceScorer
from arr_coc.selection import allocate
from arr_coc.tasks import load_dataset
from arr_coc.training.data import encode_dataset, processor_grid
from arr_coc.training.exploration import object_labels
from arr_coc.vlm.pipeline import VLMPipeline
from arr_coc.vlm.testbed import EMBEDDED_SCORER
from arr_coc.vocabulary import QUESTION_KINDS

BUDGETS = (0.03, 0.05, 0.1, 0.25)


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


@torch.no_grad()
def report(name: str, scorer: RelevanceScorer, samples, budgets) -> None:
    top_t = defaultdict(list)
    kept_stats = defaultdict(lambda: defaultdict(list))  # (selection, budget) -> kind -> [(recall, hit)]
    for sample in samples:
        out = scorer.score(sample.image[None], sample.grid, sample.query[None])
        relevance, cells, explore = out.relevance[0], out.cells[0], float(out.explore[0])  # [H', W'], [3, H', W']
        target = sample.target.flatten()
        count = int(target.sum())
        top_t[sample.kind].append(float(target[torch.topk(relevance.flatten(), count).indices].float().mean()))
        labels, objects = object_labels(sample.target)
        for budget in budgets:
            chosen = {
                "arr-coc": allocate([relevance], budget, "arr-coc", cells=[cells], explore=explore)[0],
                "top-K": allocate([relevance], budget, "arr-coc")[0],
                "divprune": allocate([relevance], budget, "divprune", features=[sample.features])[0],
            }
            for selection, kept in chosen.items():
                hit = int((labels.flatten()[kept].unique() > 0).sum()) / objects
                kept_stats[(selection, budget)][sample.kind].append((recall_at_budget(kept, sample.target), hit))
    print(f"\n{name}")
    print("top-T recall: " + "  ".join(f"{kind} {mean(top_t[kind]):.3f}" for kind in QUESTION_KINDS))
    print(
        f"{'selection':<10} {'budget':>6}"
        + "".join(f" {kind + ' recall/hit':>18}" for kind in QUESTION_KINDS)
        + "  all"
    )
    for (selection, budget), by_kind in kept_stats.items():
        every = [v for kind in QUESTION_KINDS for v in by_kind[kind]]
        cells_ = "".join(
            f" {mean(r for r, _ in by_kind[k]):>9.3f}/{mean(h for _, h in by_kind[k]):.3f}" for k in QUESTION_KINDS
        )
        print(f"{selection:<10} {budget:>6g}{cells_}  {mean(r for r, _ in every):.3f}/{mean(h for _, h in every):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scorers", nargs="+", default=[str(EMBEDDED_SCORER)], help="scorer checkpoint directories")
    parser.add_argument("--model", default=None, help="VLM directory (default: the embedded testbed)")
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--split", default="heldout")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS))
    args = parser.parse_args()
    pipeline = VLMPipeline.from_pretrained(args.model, device="cpu", dtype="fp32")
    dataset = load_dataset(
        "vqa", args.split, args.size, seed=args.seed, grid_for=processor_grid(pipeline.vlm.processor)
    )
    samples = [s for s in encode_dataset(pipeline, dataset, with_features=True, progress=False) if s.target.any()]
    print(f"{len(samples)} {args.split} samples (seed {args.seed}) with target tokens")
    for path in args.scorers:
        report(path, RelevanceScorer.load(path), samples, args.budgets)


if __name__ == "__main__":
    main()
