"""The vision tower alone: milliseconds, operator count and host syncs per forward, stock SDPA vs packed attention.

    python benchmarks/bench_vision.py [--model qwen2.5-vl-3b] [--device cpu] [--images 448 1344] [--batch 1]

The tower of a random-weight model of a real size class (``bench_prune.REAL_CONFIGS``),
or of the embedded ``testbed``,
runs on ``--batch`` images of each side, with every token (``post``) and with 10 %
of the merged tokens kept (``pre``, a random subset, so windows are uneven). Per
row: the fastest of ``--repeats`` forwards in ms, and from one profiled forward the
number of operators the host issues (on a GPU each is one or more kernel launches)
and of attention calls among them. On a GPU a tower at 448x448 is launch-bound, so
these counts are the figures that carry over from a CPU run; the milliseconds are
for the device it ran on. (Stock SDPA also reads the sequence lengths back to the
host once per layer, a sync on a GPU that a CPU run cannot show.)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_prune import REAL_CONFIGS  # noqa: E402

from arr_coc.vlm.families import family_by_name  # noqa: E402
from arr_coc.vlm.loading import load_vlm, parse_device, parse_dtype  # noqa: E402
from arr_coc.vlm.pre_encoder import encode_kept  # noqa: E402
from arr_coc.vlm.testbed import ensure_testbed  # noqa: E402
from arr_coc.vlm.vision_attention import PACKED_VISION_ATTENTION, vision_attention  # noqa: E402
from arr_coc_cli.commands.options import add_device  # noqa: E402

TOWERS = {
    "qwen2-vl": "Qwen2VisionTransformerPretrainedModel",
    "qwen2.5-vl": "Qwen2_5_VisionTransformerPretrainedModel",
    "qwen3-vl": "Qwen3VLVisionModel",
}


def build_tower(name: str, device: torch.device, dtype: torch.dtype):
    """The embedded testbed, or a bare tower wrapped with what :func:`encode_kept` reads of a loaded VLM."""
    import transformers

    if name == "testbed":
        return load_vlm(ensure_testbed("qwen2.5-vl"), device=device, dtype=dtype)
    family_name, text, vision = REAL_CONFIGS[name]
    family = family_by_name(family_name)
    config = family.config_cls()(text_config=text, vision_config=vision)
    torch.manual_seed(0)
    with torch.device(device):
        tower = getattr(transformers, TOWERS[family_name])._from_config(
            config.vision_config, dtype=dtype, attn_implementation="sdpa"
        )
    tower.eval().requires_grad_(False)
    return SimpleNamespace(family=family, device=device, model=SimpleNamespace(model=SimpleNamespace(visual=tower)))


def forward(vlm, pixels, grids, kept) -> None:
    encode_kept(vlm, pixels, grids, kept)
    if vlm.device.type == "cuda":
        torch.cuda.synchronize(vlm.device)


def counts(vlm, pixels, grids, kept) -> tuple[int, int]:
    """(operators, attention calls) of one forward."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        forward(vlm, pixels, grids, kept)
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    top = [e for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    return len(top), sum(e.name == "aten::scaled_dot_product_attention" for e in events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-vl-3b", choices=["testbed", *REAL_CONFIGS])
    add_device(parser, dtype=True)
    parser.add_argument("--images", type=int, nargs="+", default=[448], help="square image sides in pixels")
    parser.add_argument("--batch", type=int, default=1, help="images per tower call")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = parse_device(args.device)
    dtype = parse_dtype(args.dtype, device)
    vlm = build_tower(args.model, device, dtype)
    visual = vlm.model.model.visual
    unit = visual.spatial_merge_size**2
    print(f"{args.model} vision tower, {dtype}, {device}, torch {torch.__version__}, batch {args.batch}")
    print(
        f"{'image':>9} {'stage':>5} {'attention':>17} {'ms':>9} {'operators':>9} {'attention calls':>15} {'ms vs stock':>11}"
    )
    for side in args.images:
        grid = torch.tensor([1, side // 14, side // 14])
        patches = int(grid.prod())
        pixels = [torch.randn(patches, visual.patch_embed.proj.weight[0].numel()) for _ in range(args.batch)]
        grids = [grid] * args.batch
        tokens = patches // unit
        subsets = {
            "post": [None] * args.batch,
            "pre": [torch.sort(torch.randperm(tokens)[: max(1, tokens // 10)]).values for _ in range(args.batch)],
        }
        for stage, kept in subsets.items():
            stock_ms = None
            for attention in ("sdpa", PACKED_VISION_ATTENTION):
                with torch.no_grad(), vision_attention(visual, attention):
                    forward(vlm, pixels, grids, kept)  # warm-up
                    times = []
                    for _ in range(args.repeats):
                        start = time.perf_counter()
                        forward(vlm, pixels, grids, kept)
                        times.append((time.perf_counter() - start) * 1000)
                    operators, attention_calls = counts(vlm, pixels, grids, kept)
                ms = min(times)
                stock_ms = stock_ms or ms
                print(
                    f"{side:>4}x{side:<4} {stage:>5} {attention:>17} {ms:>9.1f} {operators:>9} {attention_calls:>15}"
                    f" {ms / stock_ms:>11.2f}"
                )


if __name__ == "__main__":
    main()
