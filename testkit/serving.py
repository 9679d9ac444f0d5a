"""Start the real server with ``bentoml serve`` on a free port, for the service tests and the benchmarks.

Under pytest, the test that starts it must be marked ``server`` (:mod:`testkit.markers`).
"""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from testkit.markers import require

ROOT = Path(__file__).resolve().parents[1]
SERVE_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def b64_png(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@contextmanager
def running_server(workdir: Path, **env: str) -> Iterator[Server]:
    """A ready :class:`Server` for the block (stopped after it, whatever happens)."""
    server = Server(workdir, **env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


class Server:
    """A ``bentoml serve service:ARRCOC`` subprocess; ``url`` once ready."""

    def __init__(self, workdir: Path, target: str = "service:ARRCOC", cwd: Path = ROOT, **env: str) -> None:
        require("server", "starts the real server")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "serve.log"
        environment = {
            **os.environ,
            "BENTOML_HOME": env.pop("BENTOML_HOME", str(workdir / "bentoml")),
            "ARR_COC_HOME": str(workdir / "arr-coc"),
            "WANDB_MODE": "offline",
            "WANDB_DIR": str(workdir / "wandb"),
            "HF_HUB_OFFLINE": "1",
            "BENTOML_DO_NOT_TRACK": "true",
            **env,
        }
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", target, "--port", str(self.port), "--host", "127.0.0.1"],
            cwd=cwd,
            env=environment,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + SERVE_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bentoml serve exited:\n{self.log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not ready after {SERVE_TIMEOUT_S}s:\n{self.log_path.read_text()[-4000:]}")

    def stop(self) -> None:
        """SIGTERM to `bentoml serve` alone, as a container runtime does; it stops its workers,
        whose exit handlers (e.g. W&B's) still run. Whatever is left is killed after 60 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, 9)
        except ProcessLookupError:
            pass
        self.process.wait()
        self.log.close()

    def child_pids(self, service_name: str) -> list[int]:
        """PIDs of the worker processes of one service (e.g. ``vlm-runner``)."""
        out = subprocess.run(["ps", "-ww", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
        pids = []
        for line in out.splitlines()[1:]:
            pid, ppid, args = line.split(None, 2)
            if int(ppid) == self.process.pid and f"--service-name {service_name} " in args:
                pids.append(int(pid))
        return pids
