"""What ``arr-coc quality`` measures answer fidelity on when there is no dataset: the user's own questions.

Exactly one source: ``images`` (a folder; questions written by the VLM itself with
``self_questions > 0``, else the synthetic task's three templates, which the embedded
testbed answers) or ``questions`` (a JSONL question file, e.g. from
``arr-coc export-questions``). Neither, both, or ``self_questions`` without
``images`` is refused before any model work.
"""

from __future__ import annotations

import math
import sys
from typing import Protocol

from PIL import Image

from arr_coc.errors import InvalidConfigError
from arr_coc.tasks.image_questions import (
    ImageQuestionSet,
    QuestionDataset,
    load_images,
    load_question_file,
    self_questions,
    template_questions,
)
from arr_coc.vocabulary import QUESTION_KINDS


class QuestionSource(Protocol):
    """The fields of a job's parameters that name its questions."""

    fidelity: bool
    images: str
    questions: str
    self_questions: int
    question_prompt: str
    question_tokens: int
    size: int


def label_free(params: QuestionSource) -> bool:
    """Whether ``params`` ask for fidelity on the user's questions (checked by :func:`check_question_source`)."""
    return bool(params.fidelity or params.images or params.questions)


def check_question_source(params: QuestionSource) -> None:
    """Typed errors for contradicting or missing sources (no file is read here)."""
    if params.images and params.questions:
        raise InvalidConfigError("give --images DIR or --questions FILE, not both", field="images")
    if params.fidelity and not (params.images or params.questions):
        raise InvalidConfigError(
            "--fidelity needs questions without answers: --images DIR or --questions FILE", field="fidelity"
        )
    if params.self_questions and not params.images:
        raise InvalidConfigError("--self-questions writes questions about --images DIR", field="self_questions")


def question_source_name(params: QuestionSource) -> str:
    """``file``, ``model`` (the VLM wrote them) or ``templates``."""
    if params.questions:
        return "file"
    return "model" if params.self_questions else "templates"


Images = tuple[list[tuple[str, Image.Image]], dict[str, int]]
"""What :func:`arr_coc.tasks.image_questions.load_images` gives: ``(source, image)`` pairs and skip counts."""


def read_question_source(params: QuestionSource) -> ImageQuestionSet | Images:
    """The pairs of the question file, or the images with the task's templates; with ``self_questions``,
    the images still to be questioned (``load_images``'s output), for :func:`question_dataset`.

    Reads files only (no model), so an empty folder or a file with no usable line fails
    before any model is loaded (typed errors of :mod:`arr_coc.tasks.image_questions`).
    """
    check_question_source(params)
    if params.questions:
        return load_question_file(params.questions, limit=params.size)
    per_image = params.self_questions or len(QUESTION_KINDS)
    images, skipped = load_images(params.images, limit=math.ceil(params.size / per_image))
    if params.self_questions:
        return images, skipped
    return ImageQuestionSet(template_questions(images).samples, skipped)


def question_dataset(params: QuestionSource, source: ImageQuestionSet | Images, pipeline) -> QuestionDataset:
    """At most ``params.size`` pairs of ``source`` (for images still to be questioned, the VLM writes them
    first), as a dataset with no answers; prints how many and what was skipped."""
    if not isinstance(source, ImageQuestionSet):
        images, skipped = source
        written = self_questions(
            pipeline, images, params.self_questions, params.question_prompt, params.question_tokens
        )
        source = ImageQuestionSet(written.samples, {**skipped, **written.skipped})
    samples = source.samples[: params.size]
    note = ", ".join(f"{reason}: {count}" for reason, count in sorted(source.skipped.items()))
    origin = params.questions or params.images
    print(
        f"{len(samples)} questions ({question_source_name(params)}) from {origin}"
        + (f"; skipped {note}" if note else ""),
        file=sys.stderr,
    )
    return QuestionDataset(samples)
