"""Sampled serve requests kept on disk as a question file, and exported from many runs into one.

The W&B table ``serve/examples`` shows sampled requests on the dashboard, but its images
live in an artifact, out of reach of a run folder once synced. So the tracker's owner
thread also writes each sampled request's image and question into the run's local folder
(beside the ``.wandb`` file, not among the files W&B uploads), bounded by the same
``max_examples``:

``<run folder>/serve_samples/questions.jsonl``: one line per sample,
``{"image": "000001.png", "question", "answer", "kept_ratio"}``; the image is the table's
(RGB, longest side at most ``example_max_px``). The file is a question file
(:func:`arr_coc.tasks.image_questions.load_question_file`).

:func:`export_questions` (``arr-coc export-questions``) gathers those of every serve run
under a folder into one JSONL, each distinct image stored once (named by its content
hash) in ``<stem>-images/`` beside it, each distinct (image, question) pair once.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arr_coc.errors import ImageTooLargeError, InvalidImageError, NoQuestionsError, NoRunsError
from arr_coc.images import load_image

SAMPLES_DIR = "serve_samples"
SAMPLES_FILE = "questions.jsonl"

NOT_SERVE = "not a serve run"
NO_SAMPLES = "serve run without samples"
UNREADABLE_RUN = "unreadable run file"
BAD_LINE = "bad line"
UNREADABLE_IMAGE = "unreadable image"
DUPLICATE = "duplicate"


class SampleWriter:
    """Appends sampled requests (``ExampleRow`` s) to ``folder/questions.jsonl`` with their images.

    The image is written before its line, so every line names an existing file.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.count = 0

    def add(self, row: Any) -> None:
        """Write one ``training_hooks.tracking.serve_events.ExampleRow``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.count += 1
        name = f"{self.count:06d}.png"
        row.image.save(self.folder / name)
        line = {"image": name, "question": row.question, "answer": row.answer, "kept_ratio": row.kept_ratio}
        with (self.folder / SAMPLES_FILE).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")


def run_samples_folder(run: Any) -> Path | None:
    """Where a live wandb run keeps its samples: its local run folder (``None`` for a disabled run)."""
    if getattr(run, "disabled", False):
        return None
    sync_dir = getattr(getattr(run, "settings", None), "sync_dir", None)
    return Path(sync_dir) / SAMPLES_DIR if sync_dir else Path(run.dir).parent / SAMPLES_DIR


@dataclass
class ExportReport:
    """What :func:`export_questions` wrote: ``questions`` lines, ``images`` files, from ``runs`` serve runs."""

    out: Path
    images_dir: Path
    questions: int = 0
    images: int = 0
    runs: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


def _run_files(runs: Path) -> list[Path]:
    from training_hooks.comparison.runfile import find_run_files

    if runs.is_file():
        return [runs]
    if not runs.is_dir():
        raise NoRunsError(f"no such run folder or file: {runs}", field="runs")
    files = find_run_files(runs)
    if not files:
        raise NoRunsError(f"no run-*.wandb file under {runs}", field="runs")
    return files


def export_questions(runs: str | Path, out: str | Path, *, limit: int | None = None) -> ExportReport:
    """Write the samples of every serve run under ``runs`` to the question file ``out``.

    ``runs``: a run folder, a ``.wandb`` file, or a folder of runs (e.g. a ``WANDB_DIR``).
    Lines of ``out``: ``{"image": "<stem>-images/<hash>.png", "question", "answer",
    "variant", "run"}`` (at most ``limit``). Lines that do not parse, name an unreadable
    image, or repeat a pair are skipped and counted. ``out`` is replaced only at the end,
    so it is never half-written. Raises :class:`NoRunsError` when ``runs`` holds no serve
    run and :class:`NoQuestionsError` when its serve runs logged no sample.
    """
    from training_hooks.comparison.runfile import RunFileError, read_run

    runs, out = Path(runs), Path(out)
    exporter = _Exporter(ExportReport(out, out.parent / f"{out.stem}-images"))
    report = exporter.report
    for file in _run_files(runs):
        if limit is not None and len(exporter.lines) >= limit:
            break
        try:
            data = read_run(file, allow_truncated_tail=True)
        except RunFileError:
            exporter.skipped[UNREADABLE_RUN] += 1
            continue
        if data.job_type != "serve":
            exporter.skipped[NOT_SERVE] += 1
            continue
        report.runs += 1
        samples = file.parent / SAMPLES_DIR / SAMPLES_FILE
        if not samples.is_file():
            exporter.skipped[NO_SAMPLES] += 1
            continue
        for text in samples.read_text(encoding="utf-8").splitlines():
            if limit is not None and len(exporter.lines) >= limit:
                break
            exporter.add(text, samples.parent, {"variant": data.group, "run": data.run_id})
    skipped = dict(exporter.skipped)
    if report.runs == 0:
        found = ", ".join(f"{k}: {v}" for k, v in skipped.items())
        raise NoRunsError(f"no serve run under {runs} ({found})", field="runs")
    if not exporter.lines:
        raise NoQuestionsError(
            f"the {report.runs} serve runs under {runs} logged no usable sample "
            "(requests are sampled at ARR_COC_WANDB_SAMPLE_RATE)",
            field="runs",
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text("\n".join(exporter.lines) + "\n", encoding="utf-8")
    os.replace(partial, out)
    report.questions, report.images, report.skipped = len(exporter.lines), len(exporter.images), skipped
    return report


class _Exporter:
    """The lines exported so far, the images they name (by content hash) and what was skipped."""

    def __init__(self, report: ExportReport) -> None:
        self.report = report
        self.lines: list[str] = []
        self.images: set[str] = set()
        self.pairs: set[tuple[str, str]] = set()
        self.skipped: Counter = Counter()

    def add(self, text: str, folder: Path, extra: dict[str, Any]) -> None:
        """Export one sample line of a run's ``questions.jsonl`` (its image copied once), or count why not."""
        try:
            entry = json.loads(text)
            question, name = entry["question"], entry["image"]
            if not isinstance(question, str) or not question.strip() or not isinstance(name, str):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            if text.strip():
                self.skipped[BAD_LINE] += 1
            return
        try:
            payload = (folder / name).read_bytes()
            load_image(payload)  # decodes, within the limits
        except (OSError, InvalidImageError, ImageTooLargeError):
            self.skipped[UNREADABLE_IMAGE] += 1
            return
        digest, question = hashlib.sha256(payload).hexdigest()[:20], question.strip()
        if (digest, question) in self.pairs:
            self.skipped[DUPLICATE] += 1
            return
        self.pairs.add((digest, question))
        target = self.report.images_dir / f"{digest}{Path(name).suffix.lower() or '.png'}"
        if target.name not in self.images:
            self.images.add(target.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(payload)
        answer = entry.get("answer")
        line = {"image": f"{target.parent.name}/{target.name}", "question": question}
        line["answer"] = answer if isinstance(answer, str) else None
        self.lines.append(json.dumps({**line, **extra}))
