"""Throughput of the served pipeline with W&B tracking on (offline) vs off.

    python benchmarks/bench_tracking.py [--requests 48] [--rounds 2]

Alternates servers with tracking off, on (``ARR_COC_WANDB=1``, ``WANDB_MODE=offline``,
2-second windows, the default 1 % of requests sampled as examples) and on with every
request sampled (the worst case), for ``--rounds`` rounds at concurrency 16, and
prints requests/s of each and their ratios to off. Target: under 2 % loss.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import FAILURES, load, payloads  # noqa: E402

from testkit.serving import Server  # noqa: E402

STARTUP_SETTLE_S = 8
CONFIGS = {
    "tracking off": {"ARR_COC_WANDB": "0"},
    # Windows of 2 s (15x more often than the default 30 s) and the default 1 % of examples.
    "tracking on": {"ARR_COC_WANDB": "1", "ARR_COC_WANDB_WINDOW_S": "2"},
    # The worst case: every request rendered into the examples table.
    "every example": {"ARR_COC_WANDB": "1", "ARR_COC_WANDB_WINDOW_S": "2", "ARR_COC_WANDB_SAMPLE_RATE": "1"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    requests = payloads(args.requests)
    rates: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for _ in range(args.rounds):
        for name, env in CONFIGS.items():
            server = Server(Path(tempfile.mkdtemp()), **env)
            try:
                server.wait_ready()
                time.sleep(STARTUP_SETTLE_S)  # the worker starts its W&B run at start-up
                rates[name].append(load(server.url, requests, args.concurrency)[0])
            finally:
                server.stop()
    print(f"{args.requests} requests x {args.rounds} rounds at concurrency {args.concurrency}, testbed on CPU")
    for name, values in rates.items():
        print(
            f"{name:<14} req/s per round: {', '.join(f'{v:.2f}' for v in values)}  mean {statistics.mean(values):.2f}"
        )
    for name in list(CONFIGS)[1:]:
        ratio = statistics.mean(rates[name]) / statistics.mean(rates["tracking off"])
        print(f"{name} / off throughput: {ratio:.3f} ({100 * (1 - ratio):.1f} % loss)")
    for failure in sorted(FAILURES):
        print("failure:", failure)


if __name__ == "__main__":
    main()
