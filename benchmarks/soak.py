"""Reliability soak of the served pipeline: malformed inputs, mixed load, a killed runner; prints one table.

    python benchmarks/soak.py [--seconds 600] [--concurrency 12] [--schemathesis]
    make soak                     # the full run; CI runs tests/test_soak.py (a short one)

Starts ``bentoml serve`` on the embedded testbed (loopback only), then:
1. **corpus**: >= 100 malformed requests over the four model routes; each must get a
   4xx JSON error body, none a 5xx, and the server must keep answering;
2. **load**: ``--concurrency`` clients for ``--seconds`` sending, in turn, JSON answers,
   multipart answers, streams (read to their ``done`` event) and relevance maps;
   a request fails if it is not 200 with a complete body;
   the front's runner retries are read from ``/metrics``: a stream that fell silent
   (replayed after the idle timeout) fails the run, as a failed request does;
3. **fault** (``--fault``): the VLM runner, then the relevance runner, is killed
   (SIGKILL) during the load; requests during a restart may get 503 (counted apart);
   afterwards every request must succeed again; ``--wandb unreachable|hanging`` runs
   it all with W&B tracking on against a closed port, or one that never answers;
4. the resident memory of every server process before and after the load;
5. ``--schemathesis``: schemathesis against the served ``/docs.json`` (no 5xx);
6. ``--sigterm``: SIGTERM under load, last: every request ends whole, as 503 ``draining``
   or refused once the server is gone, and the server exits within 10 s.
Exit status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
from PIL import Image

from testkit.drawing import noise, scene, shapes
from testkit.serving import Server, b64_png

ROUTES = ("/answer", "/answer_stream", "/relevance", "/v1/chat/completions")
QUESTION = "What colour is the circle?"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def malformed_bodies() -> list[tuple[str, dict | bytes, str]]:
    """``(name, body, content type)`` of broken requests for one native route."""
    good = b64_png(scene(96, 64))
    bad_values = {
        "image": [
            "",
            "%%%",
            base64.b64encode(b"\x89PNG" + b"\0" * 40).decode(),
            "data:text/plain;base64,aGk=",
            "http://127.0.0.1:1/x.png",
            12,
            None,
            ["a"],
            {"a": 1},
            b64_png(Image.new("RGB", (4000, 2))),
        ],
        "question": ["", "   ", "why " * 3000, 7, None, ["q"]],
        "budget": [0, -1, 1.5, True, "0.5", "half", [1], {"k": 1}, 1e309],
        "variant": ["best-ever", "v" * 500, 3, ""],
        "method": ["magic", 1, ""],
        "stage": ["middle", 1],
        "coverage": [0, 2, "x"],
        "max_new_tokens": [0, 10**9, "8", 1.5],
        "temperature": [-1, 99, "hot"],
        "seed": [-1, 2**70, "s"],
        "surprise": [1],
    }
    cases = [
        (f"{field}={str(value)[:24]!r}", {"image": good, "question": QUESTION, field: value}, "application/json")
        for field, values in bad_values.items()
        for value in values
    ]
    cases += [
        ("not json", b'{"image": ', "application/json"),
        ("text body", b"hello", "text/plain"),
        ("empty", b"", "application/json"),
        ("list body", b"[1, 2]", "application/json"),
        ("broken form", b"--x\r\nnot a form", "multipart/form-data; boundary=x"),
    ]
    return cases


def check_corpus(url: str) -> Counter:
    """Send the corpus to every route; count outcomes (``4xx json``, ``5xx``, ``not json``)."""
    outcome: Counter = Counter()
    with httpx.Client(base_url=url, timeout=120) as client:
        for route in ROUTES:
            for _, body, kind in malformed_bodies():
                if route == "/v1/chat/completions" and isinstance(body, dict):
                    body = {
                        "model": "arr-coc-25",
                        "messages": [
                            {
                                "role": "user",
                                "content": [
                                    {
                                        "type": "image_url",
                                        "image_url": {"url": f"data:image/png;base64,{body.get('image')}"},
                                    },
                                    {"type": "text", "text": str(body.get("question"))},
                                ],
                            }
                        ],
                        "max_tokens": body.get("max_new_tokens", 2),
                        "arr_coc": {k: v for k, v in body.items() if k in ("budget", "method", "stage", "coverage")},
                    }
                content = json.dumps(body).encode() if isinstance(body, dict) else body
                response = client.post(route, content=content, headers={"content-type": kind})
                if response.status_code >= 500:
                    outcome["5xx"] += 1
                elif response.status_code >= 400:
                    try:
                        response.json()
                        outcome["4xx json"] += 1
                    except ValueError:
                        outcome["4xx not json"] += 1
                else:
                    outcome["2xx"] += 1  # a lenient field (e.g. an OpenAI field the chat route ignores)
        outcome["alive after"] = int(client.get("/livez").status_code == 200)
    return outcome


def failure(response: httpx.Response) -> str:
    """A failed response in a line: status, error kind and detail, and how long it took."""
    try:
        body = response.json()
        what = f"{body.get('error')}: {str(body.get('detail'))[:80]}"
    except ValueError:
        what = response.text[:80]
    return f"{response.status_code} {what} after {response.elapsed.total_seconds():.0f} s"


class Load:
    """Mixed requests from ``concurrency`` threads until ``stop`` is set; outcomes by kind."""

    def __init__(self, url: str, concurrency: int) -> None:
        self.url, self.concurrency = url, concurrency
        self.stop = threading.Event()
        self.outcomes: Counter = Counter()
        self.failures: Counter = Counter()
        self.fault_window = threading.Event()
        self.fault_ended = 0.0  # monotonic time the last fault's window closed
        self.lock = threading.Lock()
        images = [scene(448, 336), shapes(300, 200, seed=1), noise(224, 224, seed=2)]
        self.pngs = [png_bytes(image) for image in images]

    def one(self, client: httpx.Client, turn: int) -> tuple[str, str | None]:
        png = self.pngs[turn % len(self.pngs)]
        kind = ("answer", "multipart", "stream", "relevance")[turn % 4]
        body = {"image": base64.b64encode(png).decode(), "question": QUESTION, "max_new_tokens": 8}
        if kind == "answer":
            response = client.post("/answer", json=body)
            return kind, None if response.status_code == 200 and "answer" in response.json() else failure(response)
        if kind == "multipart":
            response = client.post(
                "/answer",
                files={"image": ("i.png", png, "image/png")},
                data={"question": QUESTION, "max_new_tokens": "8"},
            )
            return kind, None if response.status_code == 200 else failure(response)
        if kind == "relevance":
            response = client.post("/relevance", json={k: v for k, v in body.items() if k != "max_new_tokens"})
            return kind, None if response.status_code == 200 and response.json().get("heatmap_png") else failure(
                response
            )
        with client.stream("POST", "/answer_stream", json=body) as response:
            text = "".join(response.iter_text())
        complete = response.status_code == 200 and "event: done" in text and "event: error" not in text
        if complete:
            return kind, None
        error = text.split("event: error\ndata: ", 1)[1][:90] if "event: error" in text else "no done event"
        return kind, f"{response.status_code} {error}"

    def worker(self, index: int) -> None:
        """Requests of every kind in turn; a failure of a request that began before a fault ended is the fault's."""
        with httpx.Client(base_url=self.url, timeout=330) as client:
            turn = index
            while not self.stop.is_set():
                began, during = time.monotonic(), self.fault_window.is_set()
                try:
                    kind, failure = self.one(client, turn)
                except httpx.HTTPError as error:
                    kind, failure = "transport", type(error).__name__
                with self.lock:
                    self.outcomes[kind] += 1
                    if failure is not None:
                        faulted = during or self.fault_window.is_set() or began < self.fault_ended
                        self.failures[f"{'during fault' if faulted else 'failed'}: {kind} {failure}"] += 1
                turn += 1

    def run(self, seconds: float, fault: callable | None = None) -> float:
        threads = [threading.Thread(target=self.worker, args=(i,), daemon=True) for i in range(self.concurrency)]
        start = time.monotonic()
        for thread in threads:
            thread.start()
        if fault is not None:
            time.sleep(seconds / 2)
            fault(self.fault_window)
            self.fault_ended = time.monotonic()
        time.sleep(max(0.0, seconds - (time.monotonic() - start)))
        self.stop.set()
        for thread in threads:
            thread.join()
        return time.monotonic() - start


def runner_retries(url: str) -> Counter:
    """The front's runner retries by reason (``connection``, ``idle_timeout``), from ``/metrics``."""
    retries: Counter = Counter()
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("arr_coc_runner_retries_total{"):
            labels, value = line.rsplit(" ", 1)
            reason = labels.split('reason="', 1)[1].split('"', 1)[0]
            retries[reason] += int(float(value))
    return retries


def server_processes(server: Server) -> dict[str, psutil.Process]:
    processes = {}
    for child in psutil.Process(server.process.pid).children(recursive=True):
        line = " ".join(child.cmdline())
        name = "vlm-runner" if "vlm-runner" in line else "relevance-runner" if "relevance-runner" in line else "front"
        if "_bentoml_impl.worker" in line:
            processes[name] = child
    return processes


def rss_mb(server: Server) -> dict[str, float]:
    return {name: process.memory_info().rss / 2**20 for name, process in server_processes(server).items()}


def kill_runners(server: Server, url: str):
    """A fault: SIGKILL the VLM runner, then the relevance runner; each window lasts until an answer and a
    stream both succeed again."""

    def recovered(client: httpx.Client) -> bool:
        body = {"image": b64_png(scene(64, 64)), "question": QUESTION, "max_new_tokens": 2}
        try:
            if client.post("/answer", json=body).status_code != 200:
                return False
            with client.stream("POST", "/answer_stream", json=body) as response:
                return "event: done" in "".join(response.iter_text())
        except httpx.HTTPError:
            return False

    def fault(window: threading.Event) -> None:
        for name in ("vlm-runner", "relevance-runner"):
            window.set()
            os.kill(server_processes(server)[name].pid, signal.SIGKILL)
            deadline = time.monotonic() + 180
            with httpx.Client(base_url=url, timeout=90) as client:
                while time.monotonic() < deadline and not recovered(client):
                    time.sleep(1)
            window.clear()

    return fault


def silent_server() -> int:
    """A loopback port that accepts connections and never answers (a W&B that hangs); its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept_forever() -> None:
        while True:
            held.append(listener.accept()[0])

    threading.Thread(target=accept_forever, daemon=True).start()
    return listener.getsockname()[1]


def wandb_env(mode: str) -> dict[str, str]:
    """Server environment for W&B ``off``, ``unreachable`` (a closed port) or ``hanging`` (a silent port)."""
    if mode == "off":
        return {}
    url = "http://127.0.0.1:9" if mode == "unreachable" else f"http://127.0.0.1:{silent_server()}"
    return {
        "ARR_COC_WANDB": "1",
        "WANDB_MODE": "online",
        "WANDB_API_KEY": "x" * 40,
        "WANDB_BASE_URL": url,
        "WANDB_INIT_TIMEOUT": "30",
    }


def sigterm_under_load(server: Server, concurrency: int, before_s: float = 3.0) -> dict:
    """SIGTERM (as Cloud Run sends it) while ``concurrency`` clients send answers and streams.

    Every request must end in a whole answer, a 503 ``draining`` or a refused connection
    (the server gone); anything else (a cut stream, a runner error) is lost. A request
    sent after the last response any client got found a server that had stopped
    answering: the kernel still queued its connection on the listening socket, which
    ``bentoml serve`` holds until it exits, so it is reset, not refused (on Cloud Run no
    request reaches an instance after its SIGTERM). Returns the outcomes and the
    seconds from SIGTERM to the server's exit.
    """
    body = {"image": b64_png(scene(224, 168)), "question": QUESTION, "max_new_tokens": 16}
    records: list[tuple[float, float, str]] = []  # (sent, ended, outcome)
    stop = threading.Event()

    def one(client: httpx.Client, turn: int) -> str:
        try:
            if turn % 2:
                with client.stream("POST", "/answer_stream", json=body) as response:
                    text = "".join(response.iter_text())
                if response.status_code == 200:
                    return "answered" if "event: done" in text else "lost: stream cut"
            else:
                response = client.post("/answer", json=body)
                text = response.text
                if response.status_code == 200:
                    return "answered"
            refusal = json.loads(text).get("error") if response.status_code == 503 else None
            return "503 draining" if refusal == "draining" else f"lost: {response.status_code} {refusal}"
        except httpx.ConnectError:
            return "refused (server gone)"
        except httpx.HTTPError as error:
            return f"lost: {type(error).__name__}"

    def worker(index: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            turn = index
            while not stop.is_set():
                sent = time.monotonic()
                outcome = one(client, turn)
                records.append((sent, time.monotonic(), outcome))
                turn += 1
                if not outcome.startswith("answered"):
                    time.sleep(0.2)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    time.sleep(before_s)
    signalled = time.monotonic()
    os.kill(server.process.pid, signal.SIGTERM)
    try:
        server.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    exit_s = time.monotonic() - signalled
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join()
    last_answer = max(ended for _, ended, outcome in records if outcome in ("answered", "503 draining"))
    outcomes = Counter(
        "reset (sent after the server stopped answering)"
        if outcome.startswith("lost: ") and sent > last_answer
        else outcome
        for sent, _, outcome in records
    )
    return {"outcomes": dict(outcomes), "exit_s": exit_s, "exit_code": server.process.returncode}


def run_schemathesis(url: str) -> str:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{url}/docs.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "20",
        "--request-timeout",
        "120",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    return "passed" if result.returncode == 0 else f"FAILED\n{result.stdout[-3000:]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--fault", action="store_true", help="kill each runner (VLM, then relevance) mid-load")
    parser.add_argument("--wandb", choices=["off", "unreachable", "hanging"], default="off", help="W&B tracking")
    parser.add_argument("--sigterm", action="store_true", help="end with SIGTERM under load (the server stops)")
    parser.add_argument("--schemathesis", action="store_true", help="also run schemathesis against /docs.json")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    server = Server(Path(tempfile.mkdtemp(prefix="soak-")), **wandb_env(args.wandb))
    shutdown = None
    try:
        server.wait_ready()
        corpus = check_corpus(server.url)
        before = rss_mb(server)
        load = Load(server.url, args.concurrency)
        elapsed = load.run(args.seconds, kill_runners(server, server.url) if args.fault else None)
        after = rss_mb(server)
        retries = runner_retries(server.url)
        schema = run_schemathesis(server.url) if args.schemathesis else "not run"
        shutdown = sigterm_under_load(server, args.concurrency) if args.sigterm else None
    finally:
        server.stop()
    cases = sum(corpus[k] for k in ("4xx json", "4xx not json", "5xx", "2xx"))
    total = sum(load.outcomes.values())
    failed = sum(n for key, n in load.failures.items() if key.startswith("failed"))
    print(f"{'check':<44} {'result':>28}")
    print(f"{'malformed corpus (4xx json / cases)':<44} {corpus['4xx json']:>20} / {cases:<5}")
    print(f"{'  5xx or non-JSON errors':<44} {corpus['5xx'] + corpus['4xx not json']:>28}")
    print(f"{'  server alive after':<44} {'yes' if corpus['alive after'] else 'NO':>28}")
    print(f"{f'mixed load, c{args.concurrency}, {elapsed:.0f} s (requests)':<44} {total:>28}")
    for kind, count in sorted(load.outcomes.items()):
        print(f"{'  ' + kind:<44} {count:>28}")
    print(f"{'  failed':<44} {failed:>28}")
    for key, count in sorted(load.failures.items()):
        print(f"    {key}: {count}")
    print(f"{'  runner calls retried (broken connection)':<44} {retries['connection']:>28}")
    print(f"{'  streams that fell silent (idle timeout)':<44} {retries['idle_timeout']:>28}")
    for name in sorted(before):
        print(
            f"{'RSS MB ' + name + ' before -> after':<44} {before[name]:>18.0f} -> {after.get(name, float('nan')):.0f}"
        )
    print(f"{'schemathesis':<44} {schema:>28}")
    print(f"{'W&B':<44} {args.wandb:>28}")
    lost = 0
    if shutdown is not None:
        lost = sum(n for outcome, n in shutdown["outcomes"].items() if outcome.startswith("lost"))
        print(f"{'SIGTERM under load: exit after (s)':<44} {shutdown['exit_s']:>28.1f}")
        for outcome, count in sorted(shutdown["outcomes"].items()):
            print(f"{'  ' + outcome:<44} {count:>28}")
    silent = 0 if args.fault else retries["idle_timeout"]  # a killed runner strands its streams until the timeout
    ok = failed == 0 and silent == 0 and corpus["5xx"] == 0 and corpus["4xx not json"] == 0 and corpus["alive after"]
    ok = ok and schema in ("passed", "not run")
    ok = ok and (shutdown is None or (lost == 0 and shutdown["exit_s"] < 10 and shutdown["exit_code"] == 0))
    if not ok:
        print(f"server log: {server.log_path}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "corpus": corpus,
                    "cases": cases,
                    "requests": load.outcomes,
                    "failed": failed,
                    "failures": load.failures,
                    "runner_retries": retries,
                    "rss_mb_before": before,
                    "rss_mb_after": after,
                    "schemathesis": schema,
                    "wandb": args.wandb,
                    "shutdown": shutdown,
                    "ok": ok,
                },
                indent=2,
            )
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
