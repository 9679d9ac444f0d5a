"""Requests/s and p50/p95 latency of the served pipeline: batching on vs off, vs in-process; a mixed load; or per variant.

    python benchmarks/bench_serve.py [--requests 48] [--concurrency 1 4 16]
    python benchmarks/bench_serve.py --workload mixed [--requests 64]
    python benchmarks/bench_serve.py --workload variants [--variants full arr-coc-25] [--requests 32] --out bench.json

``uniform`` (default): starts `bentoml serve` on the embedded testbed model with
adaptive batching off (max_batch_size 1 in both runners), then on (16 / 8), then
with the step scheduler, and sends ``--requests`` requests at each concurrency over loopback; then runs the same
requests in-process through the library, one by one and as one batch.

``mixed``: the random-weight Qwen2.5-VL testbed (its answers run to
``max_new_tokens``) served with each VLM scheduler, ``ARR_COC_SCHEDULER=batch`` then
``step``; against each: ``--requests`` requests at concurrency 16 with
``max_new_tokens`` drawn from 2..64, half of them streamed; a 2-token request sent
just after 8 answers of 64 tokens (it is admitted with them), and one sent while 8
such answers decode (each has streamed its first delta), next to its latency alone;
16 concurrent streams next to one. All in one run, so the ratios compare like with like on this noisy machine.

``variants``: one server with the deployment's settings on the embedded model; for each
``--variants`` name and each ``--concurrency``, ``--requests`` requests naming that variant
(after a warm-up wave): answered requests/s, p50/p95 latency, failures, and the mean
``cost.dollars`` of its answers. Prints a table and writes the bench result that
``arr-coc capacity`` reads (``--out``; :func:`arr_coc.capacity.bench_document`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from arr_coc.capacity import bench_document
from testkit.drawing import gradient, noise, scene, shapes
from testkit.serving import Server, b64_png

FAILURES: set[str] = set()
IMAGES = [scene(448, 336), shapes(300, 200, seed=1), gradient(200, 260), noise(224, 224, seed=2)]
VARIANTS = ["full", "arr-coc-25", "divprune-25", "arr-coc-10"]


def payloads(count: int) -> list[dict]:
    return [
        {"image": b64_png(IMAGES[i % 4]), "question": f"What is in part {i}?", "budget": 0.25, "max_new_tokens": 8}
        for i in range(count)
    ]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def variant_payloads(variant: str, count: int) -> list[dict]:
    """``count`` answer bodies naming ``variant`` (no budget of their own: the variant's applies)."""
    return [
        {key: value for key, value in body.items() if key != "budget"} | {"variant": variant}
        for body in payloads(count)
    ]


def answer_cost(response: httpx.Response) -> float | None:
    """The answer's ``cost.dollars``, US$; ``None`` when the response carries no cost."""
    cost = response.json().get("cost")
    return cost.get("dollars") if isinstance(cost, dict) else None


def measure(
    url: str, requests: list[dict], concurrency: int
) -> tuple[tuple[float, float, float, int], list[float | None]]:
    """(answered requests/s, p50 ms, p95 ms, failures) of ``requests`` sent ``concurrency`` at a time,
    and each answer's ``cost.dollars`` (US$, ``None`` where absent)."""
    with httpx.Client(base_url=url, timeout=300) as client:
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:  # warm-up: one full wave
            list(pool.map(lambda body: client.post("/answer", json=body), requests[:concurrency]))

        def one(body: dict) -> tuple[float, float | None] | None:
            start = time.perf_counter()
            response = client.post("/answer", json=body)
            if response.status_code != 200:
                FAILURES.add(f"{response.status_code} {response.text[:160]}")
                return None
            return (time.perf_counter() - start) * 1000.0, answer_cost(response)

        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(one, requests))
        elapsed = time.perf_counter() - start
    answered = [r for r in results if r is not None]
    latencies = [ms for ms, _ in answered]
    costs = [dollars for _, dollars in answered]
    if not latencies:
        return (0.0, float("nan"), float("nan"), len(results)), costs
    figures = (
        len(latencies) / elapsed,
        statistics.median(latencies),
        percentile(latencies, 0.95),
        len(results) - len(latencies),
    )
    return figures, costs


def load(url: str, requests: list[dict], concurrency: int) -> tuple[float, float, float, int]:
    """(answered requests/s, p50 ms, p95 ms, failures) of ``requests`` sent ``concurrency`` at a time."""
    return measure(url, requests, concurrency)[0]


def runs_on_gpu() -> bool:
    """Whether the served VLM runner holds a GPU share (``ARR_COC_VLM_GPU`` > 0)."""
    return os.environ.get("ARR_COC_VLM_GPU", "0") not in ("", "0")


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


def stream(client: httpx.Client, body: dict) -> bool:
    """One ``/answer_stream`` read to its ``done`` event; whether it got there."""
    with client.stream("POST", "/answer_stream", json=body) as response:
        if response.status_code != 200:
            FAILURES.add(f"stream {response.status_code}")
            return False
        done = any(line.startswith("event: done") for line in response.iter_lines())
    if not done:
        FAILURES.add("a stream ended without its done event")
    return done


def timed(client: httpx.Client, body: dict, streamed: bool) -> float | None:
    """Milliseconds to the whole answer (a stream: to its ``done`` event); ``None`` when it failed."""
    start = time.perf_counter()
    if streamed:
        ok = stream(client, body)
    else:
        response = client.post("/answer", json=body)
        ok = response.status_code == 200
        if not ok:
            FAILURES.add(f"{response.status_code} {response.text[:160]}")
    return (time.perf_counter() - start) * 1000.0 if ok else None


def amid_long_streams(client: httpx.Client, short: dict, long: dict, count: int = 8) -> float:
    """Milliseconds of ``short`` sent once ``count`` long streams are all decoding (each sent its first delta)."""
    streams = [client.stream("POST", "/answer_stream", json=long) for _ in range(count)]
    responses = [stream.__enter__() for stream in streams]
    try:
        lines = [response.iter_lines() for response in responses]
        for reader in lines:
            next(line for line in reader if line.startswith("data: "))
        return timed(client, short, False) or float("nan")
    finally:
        for stream in streams:
            stream.__exit__(None, None, None)


def mixed_load(url: str, count: int, width: int = 16) -> dict[str, float]:
    """Figures of one server under the mixed workload (see the module docstring); ``width``: concurrency."""
    draw = random.Random(0)
    bodies = [
        {"image": b64_png(IMAGES[i % 4]), "question": f"What is in part {i}?", "max_new_tokens": draw.randint(2, 64)}
        for i in range(count)
    ]
    streamed = [i % 2 == 1 for i in range(count)]
    figures: dict[str, float] = {}
    with httpx.Client(base_url=url, timeout=600) as client:
        with concurrent.futures.ThreadPoolExecutor(width) as pool:  # warm-up: one wave of each kind
            list(pool.map(lambda i: timed(client, bodies[i], streamed[i]), range(min(width, count))))
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(width) as pool:
            latencies = list(pool.map(lambda i: timed(client, bodies[i], streamed[i]), range(count)))
        done = [ms for ms in latencies if ms is not None]
        figures["mixed req/s"] = len(done) / (time.perf_counter() - start)
        figures["mixed p50 ms"] = statistics.median(done) if done else float("nan")
        figures["mixed p95 ms"] = percentile(done, 0.95) if done else float("nan")
        figures["mixed failed"] = count - len(done)

        short = {"image": b64_png(IMAGES[1]), "question": "Which?", "max_new_tokens": 2}
        long = {"image": b64_png(IMAGES[0]), "question": "Describe it.", "max_new_tokens": 64}
        figures["short alone ms"] = statistics.median(timed(client, short, False) or float("nan") for _ in range(5))
        with concurrent.futures.ThreadPoolExecutor(9) as pool:
            behind = [pool.submit(timed, client, long, False) for _ in range(8)]
            time.sleep(0.05)
            figures["short behind 8 long ms"] = pool.submit(timed, client, short, False).result() or float("nan")
            concurrent.futures.wait(behind)
        figures["short behind / alone"] = figures["short behind 8 long ms"] / figures["short alone ms"]
        figures["short amid 8 decoding ms"] = statistics.median(
            amid_long_streams(client, short, long) for _ in range(5)
        )
        figures["short amid / alone"] = figures["short amid 8 decoding ms"] / figures["short alone ms"]

        body = {"image": b64_png(IMAGES[0]), "question": "Describe it.", "max_new_tokens": 16}
        for streams in (1, width):
            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(streams) as pool:
                ok = sum(pool.map(lambda _: stream(client, body), range(streams * 4)))
            figures[f"{streams} streams req/s"] = ok / (time.perf_counter() - start)
        figures[f"{width} streams / 1"] = figures[f"{width} streams req/s"] / figures["1 streams req/s"]
    return figures


def mixed(count: int, width: int) -> None:
    results: dict[str, dict[str, float]] = {}
    for scheduler in ("batch", "step"):
        env = {"ARR_COC_SCHEDULER": scheduler, "ARR_COC_TESTBED_FAMILY": "qwen2.5-vl"}
        server = Server(Path(tempfile.mkdtemp()), **env)
        try:
            server.wait_ready()
            results[scheduler] = mixed_load(server.url, count, width)
        finally:
            server.stop()
    device = "CUDA" if runs_on_gpu() else "CPU"
    print(f"mixed load on {device}: random-weight qwen2.5-vl testbed, {count} requests at concurrency {width}")
    print(f"{'figure':<26} {'batch':>9} {'step':>9} {'step/batch':>10}")
    for key in results["batch"]:
        batch, step = results["batch"][key], results["step"][key]
        ratio = step / batch if batch else float("nan")
        print(f"{key:<26} {batch:>9.2f} {step:>9.2f} {ratio:>10.2f}")
    step = results["step"]
    print(f"step / batch throughput: {step['mixed req/s'] / results['batch']['mixed req/s']:.2f}x (target >= 2x)")
    print(f"2-token request sent just after 8 long answers: {step['short behind / alone']:.2f}x its solo latency")
    amid = step["short amid / alone"]
    print(f"2-token request amid 8 decoding answers: {amid:.2f}x its solo latency (median of 5; target <= 1.5x)")
    print(f"{width} concurrent streams / one stream: {step[f'{width} streams / 1']:.2f}x (target >= 4x at 16)")
    for failure in sorted(FAILURES):
        print("failure:", failure)


def level(concurrency: int, figures: tuple[float, float, float, int]) -> dict:
    """One concurrency level of a bench result from ``load``'s figures (latencies null when none was answered)."""
    rate, p50, p95, failed = figures
    return {
        "concurrency": concurrency,
        "requests_per_s": rate,
        "p50_ms": None if p50 != p50 else p50,  # NaN: nothing answered
        "p95_ms": None if p95 != p95 else p95,
        "failed": failed,
    }


def cost_per_1k_answers(costs: list[float | None]) -> float | None:
    """1000 x the mean ``cost.dollars`` of a variant's answers, US$; ``None`` unless every answer carried one."""
    if not costs or any(dollars is None for dollars in costs):
        return None
    return 1000 * statistics.fmean(costs)


def variants_document(
    measured: dict[str, list[tuple[int, tuple[float, float, float, int], list[float | None]]]],
    on_gpu: bool,
    date: str,
) -> dict:
    """The bench result of the ``variants`` workload: per variant, its (concurrency, figures, costs) per level."""
    from arr_coc.pricing import get_pricing_settings

    instance = get_pricing_settings().instance(on_gpu)
    return bench_document(
        date=date,
        device="CUDA" if on_gpu else "CPU",
        instance={"gpus": instance.gpus, "vcpus": instance.vcpus, "memory_gib": instance.memory_gib},
        levels={name: [level(c, figures) for c, figures, _ in rows] for name, rows in measured.items()},
        cost_per_1k_answers={
            name: cost_per_1k_answers([d for _, _, costs in rows for d in costs]) for name, rows in measured.items()
        },
    )


def variants(names: list[str], concurrencies: list[int], count: int, out: Path | None) -> None:
    """The ``variants`` workload (module docstring); writes its bench result to ``out``."""
    measured: dict[str, list] = {}
    server = Server(Path(tempfile.mkdtemp()))
    try:
        server.wait_ready()
        for name in names:
            requests = variant_payloads(name, count)
            measured[name] = [(c, *measure(server.url, requests, c)) for c in concurrencies]
    finally:
        server.stop()
    document = variants_document(measured, runs_on_gpu(), datetime.date.today().isoformat())
    print(f"{count} requests per cell, the embedded model on {document['device']}, 8 new tokens, each variant's budget")
    print(f"{'variant':<14} {'conc':>4} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'failed':>6} {'$/1k answers':>12}")
    for name, variant in document["variants"].items():
        cost = variant["cost_per_1k_answers"]
        for index, row in enumerate(variant["levels"]):
            p50, p95 = (float("nan") if ms is None else ms for ms in (row["p50_ms"], row["p95_ms"]))
            per_variant = "" if index else "-" if cost is None else f"{cost:.4f}"  # one mean over all its levels
            print(
                f"{name:<14} {row['concurrency']:>4} {row['requests_per_s']:>7.2f} {p50:>8.1f} {p95:>8.1f} "
                f"{row['failed']:>6} {per_variant:>12}"
            )
    for failure in sorted(FAILURES):
        print("failure:", failure)
    if out is not None:
        out.write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=["uniform", "mixed", "variants"], default="uniform")
    parser.add_argument("--requests", type=int, default=None, help="requests per cell (48; mixed: 64; variants: 32)")
    parser.add_argument("--variants", nargs="+", default=VARIANTS, help=f"variants: names ({' '.join(VARIANTS)})")
    parser.add_argument("--out", type=Path, default=None, help="variants: the bench result file (JSON)")
    parser.add_argument("--width", type=int, default=16, help="mixed: concurrency and concurrent streams")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--batching", nargs="+", choices=["off", "on", "step"], default=["off", "on", "step"])
    parser.add_argument(
        "--no-in-process",
        dest="in_process",
        action="store_false",
        help="skip the in-process rows (the served rows only)",
    )
    args = parser.parse_args()
    if args.workload == "mixed":
        mixed(args.requests or 64, args.width)
        return
    if args.workload == "variants":
        variants(args.variants, args.concurrency, args.requests or 32, args.out)
        return
    args.requests = args.requests or 48
    requests = payloads(args.requests)
    rows = []
    configs = {
        "off": (
            "served, batching off (max_batch_size 1)",
            {"ARR_COC_SCHEDULER": "batch", "ARR_COC_VLM_MAX_BATCH_SIZE": "1", "ARR_COC_RELEVANCE_MAX_BATCH_SIZE": "1"},
        ),
        "on": (
            "served, batching on (16 / 8)",
            {"ARR_COC_SCHEDULER": "batch", "ARR_COC_VLM_MAX_BATCH_SIZE": "8", "ARR_COC_RELEVANCE_MAX_BATCH_SIZE": "16"},
        ),
        "step": ("served, step scheduler (16 rows)", {"ARR_COC_SCHEDULER": "step", "ARR_COC_VLM_ROWS": "16"}),
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
    device = "CUDA" if runs_on_gpu() else "CPU"
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
