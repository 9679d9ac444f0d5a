"""Every command in the README runs somewhere: here, or in a named test, or in .ci/run.

The README's shell blocks are split into commands (continuation lines joined, comments
dropped) and its Python blocks taken whole. Each must be in :data:`RUN_HERE` (this module
runs it: the requests against a server started by ``make run``'s own command line, ``make
docs-serve``'s ``mkdocs serve``, the ``--help`` of every ``arr-coc`` sub-command with every
flag the README passes it) or in :data:`RUN_ELSEWHERE` (the test or ``.ci/run`` that runs
it, checked to exist and to hold the command's words). A command added to the README
without either fails :func:`test_every_readme_command_is_run_somewhere`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
PORT_IN_README = "localhost:3000"
SERVE_TIMEOUT_S = 240

# Commands this module runs itself (see the tests below).
RUN_HERE = {
    "make run": "test_readme_requests_against_make_run: `make -n run`'s serve command, then the requests",
    'curl -s localhost:3000/answer -F image=@arr_coc/assets/vqa-sample.png -F "question=What colour is the star?"': (
        "test_readme_requests_against_make_run"
    ),
    'printf \'{"image": "%s", "question": "How many red objects are there?", "variant": "arr-coc-10"}\' '
    "\"$(base64 -w0 arr_coc/assets/vqa-sample.png)\" | curl -s localhost:3000/answer -H 'content-type: application/json'"
    " -d @-": "test_readme_requests_against_make_run",
    "curl -sN localhost:3000/answer_stream -F image=@arr_coc/assets/vqa-sample.png "
    '-F "question=What shape is the blue object?" -F budget=0.1': "test_readme_requests_against_make_run",
    "make docs-serve": "test_make_docs_serve_serves_the_site: `make -n docs-serve`'s mkdocs serve",
}
# Commands that need what no test machine has (a hub model, a GPU, a cloud account) or that
# other tests already run: where they run, and words the named file must hold to run them.
RUN_ELSEWHERE = {
    "make test": (".ci/run", "make test"),
    "make docs": (".ci/run", "make docs"),
    ".venv/bin/arr-coc distill-scorer --model Qwen/Qwen2.5-VL-3B-Instruct --images my-images/ --self-questions 3 "
    "--out my-scorer --device cuda": (
        "tests/test_distill_job.py::test_a_folder_of_the_users_images_with_an_unreadable_file",
        '"distill-scorer", "--images"',
    ),
    ".venv/bin/arr-coc quality --fidelity --images my-images/ --self-questions 3 "
    "--model Qwen/Qwen2.5-VL-3B-Instruct --scorer my-scorer": (
        "tests/test_quality_job.py::test_fidelity_on_a_folder_of_images_needs_no_answers",
        "--fidelity",
    ),
    "ARR_COC_MODEL=Qwen/Qwen2.5-VL-3B-Instruct ARR_COC_SCORER=my-scorer make run": (
        "tests/test_bento.py::test_built_bento_serves_its_bundled_models",
        "ARR_COC_SCORER=",
    ),
    ".venv/bin/arr-coc models import --vlm Qwen/Qwen2.5-VL-3B-Instruct --scorer my-scorer": (
        "tests/test_bento.py::test_models_are_in_the_store",
        '"models", "import"',
    ),
    ".venv/bin/bentoml build": ("tests/test_bento.py::test_bento_holds_service_models_and_dockerfile", '"build"'),
    "PROJECT=my-project REGION=us-central1 deploy/cloudrun/deploy.sh": (
        "tests/test_cloudrun.py::test_deploy_script_is_valid_bash_and_complete",
        "deploy.sh",
    ),
}


def _code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return [
        (m.group(1).strip().lower(), m.group(2)) for m in re.finditer(r"^```([^\n`]*)\n(.*?)^```", text, re.M | re.S)
    ]


def _strip_comment(line: str) -> str:
    """``line`` without a ``#`` comment outside quotes."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def shell_commands(text: str) -> list[str]:
    """The commands of the shell blocks: continuations joined, comments and blank lines dropped."""
    commands = []
    for language, body in _code_blocks(text):
        if language not in SHELL_LANGUAGES:
            continue
        pending = ""
        for raw in body.splitlines():
            line = _strip_comment(raw)
            if line.endswith("\\"):
                pending += line[:-1].strip() + " "
                continue
            command = (pending + line.strip()).strip()
            pending = ""
            if command:
                commands.append(" ".join(command.split()))
    return commands


def python_blocks(text: str) -> list[str]:
    return [body for language, body in _code_blocks(text) if language in {"python", "py"}]


def test_commands_are_extracted_with_continuations_and_without_comments():
    text = "```bash\nmake run    # serve\n# a comment\nfoo --a \\\n    --b  'x # y'\n```\n```python\nprint(1)\n```\n"
    assert shell_commands(text) == ["make run", "foo --a --b 'x # y'"]
    assert python_blocks(text) == ["print(1)\n"]


def test_every_readme_command_is_run_somewhere():
    commands = shell_commands(README.read_text())
    uncovered = [c for c in commands if c not in RUN_HERE and c not in RUN_ELSEWHERE]
    assert not uncovered, (
        "README commands that no test runs: add each to RUN_HERE (and run it in this module) or to RUN_ELSEWHERE "
        "(naming the test or .ci/run that runs it):\n" + "\n".join(uncovered)
    )
    stale = [c for c in [*RUN_HERE, *RUN_ELSEWHERE] if c not in commands]
    assert not stale, "commands listed here that the README no longer has:\n" + "\n".join(stale)
    assert len(python_blocks(README.read_text())) == 1, "test_readme_requests_against_make_run runs the one block"


@pytest.mark.parametrize("command", sorted(RUN_ELSEWHERE))
def test_the_test_named_for_a_command_exists_and_runs_it(command):
    where, words = RUN_ELSEWHERE[command]
    path, _, name = where.partition("::")
    source = (ROOT / path).read_text()
    if name:
        assert re.search(rf"^def {re.escape(name)}\(", source, re.M), f"{where} does not exist"
    assert words in source, f"{path} does not hold {words!r}: does it still run `{command}`?"


def _arr_coc_commands() -> list[list[str]]:
    commands = [*RUN_HERE, *RUN_ELSEWHERE]
    return [shlex.split(c) for c in commands if shlex.split(c)[0].endswith("bin/arr-coc")]


@pytest.mark.parametrize("argv", _arr_coc_commands(), ids=lambda argv: argv[1])
def test_arr_coc_commands_of_the_readme_take_their_flags(argv):
    """The sub-command's --help runs and lists every flag the README passes it."""
    command = argv[1:3] if argv[1] == "models" else argv[1:2]  # `models import`: the nested command's flags
    result = subprocess.run(
        [sys.executable, "-m", "arr_coc_cli", *command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for flag in (word for word in argv if word.startswith("--")):
        assert flag in result.stdout, f"`arr-coc {' '.join(command)}` has no {flag}"


def test_the_bentoml_and_deploy_commands_parse():
    assert subprocess.run([sys.executable, "-m", "bentoml", "build", "--help"], capture_output=True).returncode == 0
    assert subprocess.run(["bash", "-n", str(ROOT / "deploy/cloudrun/deploy.sh")]).returncode == 0


def _make_recipe(target: str) -> str:
    """The last line ``make -n target`` prints: the target's own command (set-up lines come before it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # under `make test`
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.strip().splitlines() if not line.startswith("make")][-1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _running(command: str, ready_url: str, log: Path, env: dict[str, str] | None = None) -> Iterator[None]:
    """``command`` (a shell line) in its own process group until the block ends; waits for ``ready_url``."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["bash", "-c", command],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + SERVE_TIMEOUT_S
            while True:
                assert process.poll() is None, f"`{command}` exited:\n{log.read_text()[-4000:]}"
                try:
                    if httpx.get(ready_url, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"`{command}` not ready:\n{log.read_text()[-4000:]}"
                time.sleep(0.5)
            yield
        finally:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=60)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()


def _shell(command: str, port: int) -> str:
    line = command.replace(PORT_IN_README, f"127.0.0.1:{port}")
    result = subprocess.run(["bash", "-c", line], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"`{command}` failed:\n{result.stderr}"
    return result.stdout


@pytest.mark.server
@pytest.mark.timeout(900)
def test_readme_requests_against_make_run(tmp_path):
    """`make run`'s serve command on a free port, then every request of the README, as written, against it."""
    serve = _make_recipe("run")
    assert "bentoml serve service:ARRCOC" in serve, serve
    port = _free_port()
    env = {
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "ARR_COC_HOME": str(tmp_path / "arr-coc"),
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path / "wandb"),
        "HF_HUB_OFFLINE": "1",
        "BENTOML_DO_NOT_TRACK": "true",
    }
    requests = [c for c in RUN_HERE if PORT_IN_README in c]
    assert len(requests) == 3
    with _running(f"{serve} --port {port}", f"http://127.0.0.1:{port}/readyz", tmp_path / "serve.log", env):
        first, as_json, streamed = (_shell(c, port) for c in requests)
        for body in (json.loads(first), json.loads(as_json)):
            assert body["answer"] and 0 < body["kept_tokens"] < body["total_tokens"], body
        assert json.loads(first)["variant"] == "arr-coc-25"  # the README names the default variant
        assert json.loads(as_json)["variant"] == "arr-coc-10"
        assert "event: done" in streamed and '"delta"' in streamed, streamed

        code = python_blocks(README.read_text())[0].replace(PORT_IN_README, f"127.0.0.1:{port}")
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, env=os.environ
        )
        assert result.returncode == 0, result.stderr
        assert "visual_tokens_kept" in result.stdout, result.stdout


def _has_mkdocs() -> bool:
    try:
        import mkdocs  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_mkdocs(), reason="the docs extra is not installed (make docs installs it)")
@pytest.mark.timeout(300)
def test_make_docs_serve_serves_the_site(tmp_path):
    serve = _make_recipe("docs-serve")
    assert serve.endswith("mkdocs serve"), serve
    port = _free_port()
    with _running(f"{serve} -a 127.0.0.1:{port}", f"http://127.0.0.1:{port}/", tmp_path / "docs.log"):
        page = httpx.get(f"http://127.0.0.1:{port}/settings/", timeout=30)
        assert page.status_code == 200 and "ARR_COC_MODEL" in page.text
