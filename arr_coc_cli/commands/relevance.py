"""``arr-coc relevance``: score every visual token of an image against a question.

With ``--model`` the grid and the question embedding are the VLM's own (its
processor and input embeddings; no LLM pass). Without it the grid is one token per
28x28 pixels (the Qwen-VL default of 14-pixel patches merged 2x2) and the question
is hash-embedded. The scorer is the untrained (seeded) one unless ``--scorer``
names a checkpoint.
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path

from arr_coc_cli.commands.options import add_method, parse_budget

PIXELS_PER_TOKEN = 28
HASH_QUERY_DIM = 64
SHADES = " .:-=+*#%@"


def sample_image_path() -> Path:
    """The sample image shipped with the package."""
    return Path(str(resources.files("arr_coc") / "assets" / "sample.png"))


def default_grid(size: tuple[int, int]) -> tuple[int, int]:
    """``(H', W')`` for an image of ``(width, height)`` pixels, one token per 28x28 pixels."""
    width, height = size
    return max(1, round(height / PIXELS_PER_TOKEN)), max(1, round(width / PIXELS_PER_TOKEN))


def ascii_map(relevance, mask) -> str:
    """One character per token, darker = more relevant; dropped tokens print as ``·``."""
    lines = []
    for row, keep_row in zip(relevance.tolist(), mask):
        line = "".join(SHADES[min(len(SHADES) - 1, int(v * len(SHADES)))] if k else "·" for v, k in zip(row, keep_row))
        lines.append(line)
    return "\n".join(lines)


def score_without_vlm(args: argparse.Namespace, image):
    """``(grid, relevance [H', W'], cells [3, H', W'], explore)``: grid from ``--grid`` or the 28-pixel default,
    question hash-embedded."""
    import torch

    from arr_coc.images import to_tensor
    from arr_coc.query import hash_embedding
    from arr_coc.scorer import RelevanceScorer

    scorer = RelevanceScorer.load(args.scorer) if args.scorer else RelevanceScorer(HASH_QUERY_DIM).eval()
    grid = tuple(args.grid) if args.grid else default_grid(image.size)
    query = hash_embedding(args.question, scorer.query_dim)[None]
    with torch.inference_mode():
        scored = scorer.score(to_tensor(image)[None], grid, query)
    return grid, scored.relevance[0], scored.cells[0], float(scored.explore[0])


def score_with_vlm(args: argparse.Namespace, image):
    """``(grid, relevance [H', W'], cells, explore)`` from the VLM's own token grid and question embedding
    (no LLM pass)."""
    from arr_coc.errors import InvalidGridError
    from arr_coc.relevance_model import RelevanceModel

    if args.grid:
        raise InvalidGridError("--grid and --model exclude each other: the model fixes the grid", field="grid")
    scored = RelevanceModel.from_pretrained(args.model, scorer=args.scorer or None).score([image], [args.question])[0]
    return scored.grid, scored.relevance, scored.cells, scored.explore


def select_with_vlm_features(args: argparse.Namespace, image):
    """``(grid, relevance [H', W'], kept [K])`` from the VLM's tower (DivPrune and CDPruner select from its features)."""
    from arr_coc.errors import InvalidConfigError
    from arr_coc.vlm.pipeline import VLMPipeline
    from arr_coc.vlm.types import AnswerRequest, GenerationParams

    if not args.model:
        raise InvalidConfigError(
            f"{args.method} selects from the VLM's features: name one with --model", field="method"
        )
    pipeline = VLMPipeline.from_pretrained(args.model, scorer=args.scorer or None)
    request = AnswerRequest(
        image=image,
        question=args.question,
        method=args.method,
        budget=args.budget,
        generation=GenerationParams(seed=args.seed),
    )
    prepared = pipeline.prepare([request], {})[0]
    return prepared.grid, prepared.relevance, prepared.kept


def run(args: argparse.Namespace) -> int:
    from arr_coc.heatmap import kept_mask, overlay
    from arr_coc.images import load_image
    from arr_coc.selection import allocate
    from arr_coc.vocabulary import FEATURE_METHODS

    image = load_image(args.image)
    if args.method in FEATURE_METHODS:
        grid, relevance, kept = select_with_vlm_features(args, image)
    else:
        grid, relevance, cells, explore = (score_with_vlm if args.model else score_without_vlm)(args, image)
        kept = allocate(relevance[None], args.budget, args.method, args.seed, cells=[cells], explore=explore)[0]
    if args.heatmap:
        overlay(image, relevance, kept).save(args.heatmap)
    if args.json:
        print(
            json.dumps(
                {
                    "grid": list(grid),
                    "relevance": [[round(v, 6) for v in row] for row in relevance.tolist()],
                    "kept": kept.tolist(),
                    "kept_tokens": int(kept.numel()),
                    "total_tokens": grid[0] * grid[1],
                }
            )
        )
    else:
        print(f"grid {grid[0]}x{grid[1]}: kept {kept.numel()} of {grid[0] * grid[1]} tokens ({args.method})")
        print(ascii_map(relevance, kept_mask(grid, kept)))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("relevance", help="score the visual tokens of an image against a question")
    parser.add_argument("image", nargs="?", default=str(sample_image_path()), help="image file (default: the sample)")
    parser.add_argument("question", nargs="?", default="Where is the red house?")
    parser.add_argument("--grid", type=int, nargs=2, metavar=("ROWS", "COLS"), help="visual-token grid H' W'")
    parser.add_argument("--budget", type=parse_budget, default=0.25, help="tokens kept: a count or a ratio")
    add_method(
        parser, "arr-coc", "selection method (divprune and cdpruner need --model: they select from its features)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random method")
    parser.add_argument("--scorer", help="scorer checkpoint directory (default: untrained, seeded)")
    parser.add_argument("--model", help="VLM directory or hub id: use its token grid and question embeddings")
    parser.add_argument("--heatmap", help="write a PNG heatmap overlay here")
    parser.add_argument("--json", action="store_true", help="print a JSON object")
    parser.set_defaults(func=run)
