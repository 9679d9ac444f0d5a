"""Which sign of CDPruner's question relevance holds up on held-out data?

The reference CDPruner negates its CLIP image-text similarity before min-max
scaling; with Qwen's input embeddings standing in for CLIP text features, the
sign has to be checked. This prints, for the embedded default model on the
held-out split of the synthetic VQA task, CDPruner's accuracy and target-token
recall at each budget with ``RELEVANCE_SIGN = +1`` and ``-1`` (and the linear /
``theta`` quality weightings), so ``arr_coc.selection.cdpruner.RELEVANCE_SIGN`` follows
the data.

    .venv/bin/python benchmarks/cdpruner_sign.py --size 300
"""

from __future__ import annotations

import argparse

from arr_coc.evaluation import evaluate_variant, summarize
from arr_coc.selection import cdpruner as baselines
from arr_coc.tasks.shapes_vqa import ShapesVQA
from arr_coc.training.data import processor_grid
from arr_coc.variants import ad_hoc
from arr_coc.vlm.pipeline import VLMPipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=300, help="held-out samples")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.1, 0.25])
    args = parser.parse_args()
    pipeline = VLMPipeline.from_pretrained(device="cpu", dtype="fp32")
    dataset = ShapesVQA(args.size, "heldout", seed=0, grid_for=processor_grid(pipeline.vlm.processor))
    print(f"{'sign':>4} {'theta':>6} {'budget':>6} {'accuracy':>8} {'recall':>7}")
    for sign in (1, -1):
        for theta in (None, 0.5):
            baselines.RELEVANCE_SIGN, baselines.THETA = sign, theta
            for budget in args.budgets:
                records = list(
                    evaluate_variant(pipeline, ad_hoc("cdpruner", budget), dataset, batch_size=8, max_new_tokens=4)
                )
                summary = summarize(records, 1.0)
                print(f"{sign:>4} {str(theta):>6} {budget:>6} {summary['accuracy']:>8.3f} {summary['recall']:>7.3f}")


if __name__ == "__main__":
    main()
