"""Cold start: process start -> /readyz, and the first request against the tenth, warm-up off vs on.

    python benchmarks/bench_coldstart.py [--requests 10] [--modes off on]

Starts `bentoml serve` on the embedded default model (the trained VQA testbed) once
per mode (``ARR_COC_WARM_UP=0`` then ``1``), times process start until ``/readyz``
answers 200, then sends ``--requests`` identical ``/answer`` requests one at a time
(the shipped sample image, the same question). Prints seconds to ready, the first
and the tenth request's latency and their ratio. Target on CPU with warm-up on:
ready <= 10 s, first <= 1.5x the tenth.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx

from testkit.serving import Server

ROOT = Path(__file__).resolve().parents[1]

SAMPLE = ROOT / "arr_coc" / "assets" / "vqa-sample.png"
BODY = {"question": "What colour is the circle?", "max_new_tokens": 4}


def cold_start(warm_up: bool, requests: int) -> tuple[float, list[float]]:
    """(seconds from process start to ready, per-request latencies in ms)."""
    import base64

    body = {**BODY, "image": base64.b64encode(SAMPLE.read_bytes()).decode()}
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        server = Server(Path(workdir), ARR_COC_WARM_UP="1" if warm_up else "0")
        try:
            server.wait_ready()
            ready_s = time.perf_counter() - start
            latencies = []
            with httpx.Client(base_url=server.url, timeout=300) as client:
                for _ in range(requests):
                    sent = time.perf_counter()
                    response = client.post("/answer", json=body)
                    response.raise_for_status()
                    latencies.append((time.perf_counter() - sent) * 1000.0)
        finally:
            server.stop()
    return ready_s, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--modes", nargs="+", choices=["off", "on"], default=["off", "on"])
    args = parser.parse_args()
    print(f"{'warm-up':>8} {'ready s':>8} {'first ms':>9} {'tenth ms':>9} {'first/tenth':>12}")
    for mode in args.modes:
        ready_s, latencies = cold_start(mode == "on", args.requests)
        first, last = latencies[0], latencies[-1]
        print(f"{mode:>8} {ready_s:>8.1f} {first:>9.0f} {last:>9.0f} {first / last:>12.2f}")


if __name__ == "__main__":
    main()
