"""Save a random-weight model of a real size class as a checkpoint directory (bfloat16 safetensors).

    python benchmarks/real_size_checkpoint.py qwen2.5-vl-3b OUT_DIR

The model of ``bench_prune.REAL_CONFIGS`` (the 3B configuration's shapes, the testbed
tokenizer, Qwen's pixel limits): what ``serve_own_model.sh`` distils a scorer for and
serves, standing in for a hub checkpoint on a machine with no hub access.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prune import REAL_CONFIGS, random_real_size_model  # noqa: E402


def main() -> int:
    name, out = sys.argv[1], Path(sys.argv[2])
    if name not in REAL_CONFIGS:
        print(f"unknown configuration {name!r}; one of {', '.join(REAL_CONFIGS)}", file=sys.stderr)
        return 2
    vlm = random_real_size_model(name, torch.device("cpu"), torch.bfloat16)
    vlm.model.save_pretrained(out)
    vlm.processor.save_pretrained(out)
    print(f"saved {name} ({sum(p.numel() for p in vlm.model.parameters()) / 1e9:.2f} B parameters) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
