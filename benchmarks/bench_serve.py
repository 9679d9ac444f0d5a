"""Requests/s and p50/p95 latency of the served pipeline, batching on vs off, vs in-process.

    python benchmarks/bench_serve.py [--requests 48] [--concurrency 1 4 16]

Starts `bentoml serve` twice on the embedded testbed model: once with adaptive
batching off (max_batch_size 1 in both runners), once on (16 / 8). For each, sends
``--requests`` requests at each concurrency over loopback. Then runs the same
requests in-process through the library, one by one and as one batch. All in one
run, so the ratios compare like with like on this noisy machine.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from drawing import gradient, noise, scene, shapes  # noqa: E402
from serving import Server, b64_png  # noqa: E402

FAILURES: set[str] = set()
IMAGES = [scene(448, 336), shapes(300, 200, seed=1), gradient(200, 260), noise(224, 224, seed=2)]


def payloads(count: int) -> list[dict]:
    return [
        {"image": b64_png(IMAGES[i % 4]), "question": f"What is in part {i}?", "budget": 0.25, "max_new_tokens": 8}
        for i in range(count)
    ]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def load(url: str, requests: list[dict], concurrency: int) -> tuple[float, float, float, int]:
    """(answered requests/s, p50 ms, p95 ms, failures) of ``requests`` sent ``concurrency`` at a time."""
    with httpx.Client(base_url=url, timeout=300) as client:
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:  # warm-up: one full wave
            list(pool.map(lambda body: client.post("/answer", json=body), requests[:concurrency]))

        def one(body: dict) -> float | None:
            start = time.perf_counter()
            response = client.post("/answer", json=body)
            if response.status_code != 200:
                FAILURES.add(f"{response.status_code} {response.text[:160]}")
                return None
            return (time.perf_counter() - start) * 1000.0

        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(one, requests))
        elapsed = time.perf_counter() - start
    latencies = [r for r in results if r is not None]
    if not latencies:
        return 0.0, float("nan"), float("nan"), len(results)
    return (
        len(latencies) / elapsed,
        statistics.median(latencies),
        percentile(latencies, 0.95),
        len(results) - len(latencies),
    )


def in_process(requests: list[dict]) -> dict[str, tuple[float, float, float]]:
    import base64

    from arr_coc.images import load_image
    from arr_coc.vlm.pipeline import VLMPipeline
    from arr_coc.vlm.types import AnswerRequest, GenerationParams

    pipeline = VLMPipeline.from_pretrained()  # the embedded default, as the server serves it
    library = [
        AnswerRequest(
            load_image(base64.b64decode(r["image"])),
            r["question"],
            budget=r["budget"],
            generation=GenerationParams(max_new_tokens=r["max_new_tokens"]),
        )
        for r in requests
    ]
    pipeline.answer(library[0])
    latencies, start = [], time.perf_counter()
    for request in library:
        t = time.perf_counter()
        pipeline.answer(request)
        latencies.append((time.perf_counter() - t) * 1000.0)
    one_by_one = (
        len(library) / (time.perf_counter() - start),
        statistics.median(latencies),
        percentile(latencies, 0.95),
    )
    start = time.perf_counter()
    for chunk in range(0, len(library), 8):
        pipeline.answer_batch(library[chunk : chunk + 8])
    batched = len(library) / (time.perf_counter() - start)
    return {
        "in-process, one by one": (*one_by_one, 0),
        "in-process, batches of 8": (batched, float("nan"), float("nan"), 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--batching", nargs="+", choices=["off", "on"], default=["off", "on"])
    parser.add_argument(
        "--no-in-process",
        dest="in_process",
        action="store_false",
        help="skip the in-process rows (the served rows only)",
    )
    args = parser.parse_args()
    requests = payloads(args.requests)
    rows = []
    configs = {
        "off": (
            "served, batching off (max_batch_size 1)",
            {"ARR_COC_VLM_MAX_BATCH_SIZE": "1", "ARR_COC_RELEVANCE_MAX_BATCH_SIZE": "1"},
        ),
        "on": (
            "served, batching on (16 / 8)",
            {"ARR_COC_VLM_MAX_BATCH_SIZE": "8", "ARR_COC_RELEVANCE_MAX_BATCH_SIZE": "16"},
        ),
    }
    for name, env in (configs[choice] for choice in args.batching):
        server = Server(Path(tempfile.mkdtemp()), **env)
        try:
            server.wait_ready()
            for concurrency in args.concurrency:
                rows.append((name, concurrency, *load(server.url, requests, concurrency)))
        finally:
            server.stop()
    for name, figures in (in_process(requests) if args.in_process else {}).items():
        rows.append((name, 1, *figures))
    base = rows[0][2]
    device = "CUDA" if os.environ.get("ARR_COC_VLM_GPU", "0") not in ("", "0") else "CPU"
    print(f"{args.requests} requests per cell, the embedded testbed on {device}, 8 new tokens, budget 25%")
    print(f"{'configuration':<42} {'conc':>4} {'req/s':>7} {'x base':>7} {'p50 ms':>8} {'p95 ms':>8} {'failed':>6}")
    for name, concurrency, rate, p50, p95, failed in rows:
        print(f"{name:<42} {concurrency:>4} {rate:>7.1f} {rate / base:>7.2f} {p50:>8.1f} {p95:>8.1f} {failed:>6}")
    served = [
        rate for name, concurrency, rate, *_ in rows if name.startswith("served, batching on") and concurrency == 16
    ]
    batched = [rate for name, _, rate, *_ in rows if name == "in-process, batches of 8"]
    if served and batched:
        print(f"served at concurrency 16 / in-process in batches of 8: {served[0] / batched[0]:.2f}x (target >= 0.8x)")
    for failure in sorted(FAILURES):
        print("failure:", failure)


if __name__ == "__main__":
    main()
