"""Images and questions without a dataset: (image, question) pairs from the user's own files.

Sources, all giving an :class:`ImageQuestionSet` (pairs plus counts of what was skipped):

- a folder of images (:func:`load_images`), questioned by the VLM itself
  (:func:`self_questions`: an instruction-tuned model writes ``n`` short questions per
  image) or, for the embedded testbed that cannot write, by the synthetic task's three
  templates (:func:`template_questions`);
- a JSONL file of ``{"image": path, "question": text}`` lines (:func:`load_question_file`),
  e.g. what ``arr-coc export-questions`` writes from logged serve samples. Image paths
  may be relative to the file's folder; other keys (``answer``, ``variant``...) are ignored.

There are no answers: the pairs feed label-free uses (the VLM's own all-token answers as
the reference of answer fidelity, its own attention as a scorer's teacher).

Bad input: a folder without images, or whose images all fail, raises
:class:`~arr_coc.errors.NoImagesError`; a file none of whose lines gives a pair raises
:class:`~arr_coc.errors.NoQuestionsError`. Anything less is skipped and counted under a
reason (:data:`SKIP_REASONS`). Images are decoded by :func:`arr_coc.images.load_image`,
limits first, so a decompression bomb is skipped as ``image too large``.

Large sets need not sit in memory: :func:`find_images` and ``load_question_file(lazy=True)``
decode each image once to check it, then keep only its path (:class:`ImageFile`); the
pairs they give (:class:`ImageFileQuestion`) decode their image again on each use.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from arr_coc.errors import (
    ImageTooLargeError,
    InvalidConfigError,
    InvalidImageError,
    InvalidQuestionError,
    MissingChatTemplateError,
    NoImagesError,
    NoQuestionsError,
)
from arr_coc.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, load_image, to_rgb
from arr_coc.query import check_question
from arr_coc.synthetic import Sample
from arr_coc.tasks.shapes_vqa import COLOURS, SHAPES, question_for

if TYPE_CHECKING:
    from arr_coc.vlm.pipeline import VLMPipeline

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
MAX_QUESTION_CHARS = 1000

UNREADABLE = "unreadable image"
TOO_LARGE = "image too large"
NOT_AN_IMAGE = "not an image file"
BAD_JSON = "bad json"
MISSING_IMAGE = "missing image"
MISSING_QUESTION = "missing question"
INVALID_QUESTION = "invalid question"
NONE_WRITTEN = "no question written"
SKIP_REASONS = (UNREADABLE, TOO_LARGE, NOT_AN_IMAGE, BAD_JSON, MISSING_IMAGE, MISSING_QUESTION, INVALID_QUESTION)

DEFAULT_PROMPT = (
    "Write {n} short questions about this image, one per line, each answerable in a word or two "
    "by looking at the image. Write only the questions."
)
"""What :func:`self_questions` asks the VLM; ``{n}`` becomes the number of questions."""


@dataclass(frozen=True)
class ImageFile:
    """An image file that is decoded on each :meth:`read` and never kept, within the limits it was checked with."""

    path: Path
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS

    def read(self) -> Image.Image:
        """The RGB image (:func:`arr_coc.images.load_image`); its typed errors if the file broke since."""
        return load_image(self.path, max_bytes=self.max_bytes, max_pixels=self.max_pixels)


ImageList = Sequence[tuple[str, Image.Image | ImageFile]] | Sequence[Image.Image]
"""Images to question: ``(source, image)`` pairs as :func:`load_images` or :func:`find_images` give them,
or bare PIL images."""


@dataclass
class ImageQuestion:
    """One question about one image.

    image: RGB PIL image; question: stripped text; source: where it came from
    (the image's path, or ``<file>:<line>`` of a question file).
    """

    image: Image.Image
    question: str
    source: str


@dataclass(frozen=True)
class ImageFileQuestion:
    """One question about an image file: as :class:`ImageQuestion`, but ``image`` decodes ``file`` on each access."""

    file: ImageFile
    question: str
    source: str

    @property
    def image(self) -> Image.Image:
        return self.file.read()


@dataclass
class ImageQuestionSet:
    """Pairs in source order, and ``skipped``: reason -> how many inputs were dropped for it."""

    samples: list[ImageQuestion | ImageFileQuestion] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[ImageQuestion | ImageFileQuestion]:
        return iter(self.samples)

    def as_dataset(self) -> QuestionDataset:
        """These pairs as a :class:`arr_coc.synthetic.Dataset` (what evaluation reads)."""
        return QuestionDataset(self.samples)


class QuestionDataset:
    """(image, question) pairs as a :class:`arr_coc.synthetic.Dataset` of samples with no answer.

    Each :class:`~arr_coc.synthetic.Sample` has ``answer=""``, ``kind=""`` and an empty
    ``target_mask`` (``[0, 0]`` bool): evaluation leaves them out of accuracy and recall.
    A sample's image is whatever its pair's ``image`` gives at indexing (decoded then for
    an :class:`ImageFileQuestion`).
    """

    def __init__(self, samples: Sequence[ImageQuestion | ImageFileQuestion]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        pair = self.samples[index]
        return Sample(pair.image, pair.question, "", torch.zeros((0, 0), dtype=torch.bool), "")


def _describe(skipped: dict[str, int]) -> str:
    return ", ".join(f"{reason}: {count}" for reason, count in sorted(skipped.items())) or "nothing read"


def _read(path: Path, skipped: Counter, max_bytes: int, max_pixels: int) -> Image.Image | None:
    """The decoded RGB image, or ``None`` with its reason counted in ``skipped``."""
    try:
        return load_image(path, max_bytes=max_bytes, max_pixels=max_pixels)
    except ImageTooLargeError:
        skipped[TOO_LARGE] += 1
    except InvalidImageError:
        skipped[UNREADABLE] += 1
    return None


def _checked(path: Path, skipped: Counter, max_bytes: int, max_pixels: int) -> ImageFile | None:
    """``path`` as an :class:`ImageFile` once it decodes (the pixels are dropped), else ``None`` as :func:`_read`."""
    if _read(path, skipped, max_bytes, max_pixels) is None:
        return None
    return ImageFile(path, max_bytes, max_pixels)


def _question(image: Image.Image | ImageFile, question: str, source: str) -> ImageQuestion | ImageFileQuestion:
    if isinstance(image, ImageFile):
        return ImageFileQuestion(image, question, source)
    return ImageQuestion(image, question, source)


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidConfigError(f"limit must be an int >= 1, got {limit!r}", field="limit")


def _scan_folder(
    directory: str | Path, limit: int | None, read: Callable[[Path, Counter], Any]
) -> tuple[list[tuple[str, Any]], dict[str, int]]:
    """``read(path, skipped)`` of every image file below ``directory`` that is not ``None``; see :func:`load_images`."""
    _check_limit(limit)
    root = Path(directory)
    if not root.is_dir():
        raise NoImagesError(f"no such folder: {root}", field="images")
    skipped: Counter = Counter()
    images: list[tuple[str, Any]] = []
    files = 0
    for path in sorted(root.rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped[NOT_AN_IMAGE] += 1
            continue
        files += 1
        image = read(path, skipped)
        if image is not None:
            images.append((str(path), image))
            if limit is not None and len(images) >= limit:
                break
    if files == 0:
        kinds = ", ".join(sorted(IMAGE_SUFFIXES))
        raise NoImagesError(f"{root} holds no image files ({kinds})", field="images")
    if not images:
        raise NoImagesError(
            f"none of the {files} image files in {root} could be read ({_describe(skipped)})", field="images"
        )
    return images, dict(skipped)


def load_images(
    directory: str | Path,
    *,
    limit: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[list[tuple[str, Image.Image]], dict[str, int]]:
    """Every image file below ``directory`` (recursively, sorted by path; hidden files skipped).

    Returns ``([(path, RGB image)], skipped)``; at most ``limit`` images are read. Files
    whose suffix is not in :data:`IMAGE_SUFFIXES` count as ``not an image file``; image
    files that do not decode, or break the byte/pixel limits, are skipped and counted.
    Raises :class:`NoImagesError` (``field="images"``) when the folder does not exist,
    holds no image file, or none of them decodes.
    """
    return _scan_folder(directory, limit, lambda path, skipped: _read(path, skipped, max_bytes, max_pixels))


def find_images(
    directory: str | Path,
    *,
    limit: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[list[tuple[str, ImageFile]], dict[str, int]]:
    """As :func:`load_images`, but only one image is decoded at a time: each is checked, then kept as its path.

    Returns ``([(path, ImageFile)], skipped)`` with the same skips, counts and errors as :func:`load_images`.
    """
    return _scan_folder(directory, limit, lambda path, skipped: _checked(path, skipped, max_bytes, max_pixels))


def load_question_file(
    path: str | Path,
    *,
    limit: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    lazy: bool = False,
) -> ImageQuestionSet:
    """The pairs of a JSONL file of ``{"image": path, "question": text}`` lines.

    Relative image paths are taken from the file's folder; an image named by several
    lines is decoded once (the samples share it). ``lazy``: each image is decoded once to
    check it and dropped; the pairs are :class:`ImageFileQuestion` s sharing one
    :class:`ImageFile` per path. Blank lines are ignored; a line that is
    not a JSON object (``bad json``), has no image path or question, a question over
    :data:`MAX_QUESTION_CHARS`, or an image that does not decode is skipped and counted.
    At most ``limit`` pairs are read. Raises :class:`NoQuestionsError`
    (``field="questions"``) when the file is missing or no line gives a pair.
    """
    _check_limit(limit)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise NoQuestionsError(f"cannot read the question file {path} ({error})", field="questions") from error
    folder = path.parent
    skipped: Counter = Counter()
    read = _checked if lazy else _read
    decoded: dict[Path, Image.Image | ImageFile | str] = {}  # an image, or why it failed
    samples: list[ImageQuestion | ImageFileQuestion] = []
    lines = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        lines += 1
        try:
            entry = json.loads(line)
        except ValueError:
            skipped[BAD_JSON] += 1
            continue
        if not isinstance(entry, dict):
            skipped[BAD_JSON] += 1
            continue
        question, image_path = entry.get("question"), entry.get("image")
        if not isinstance(question, str) or not question.strip():
            skipped[MISSING_QUESTION] += 1
            continue
        try:
            question = check_question(question, MAX_QUESTION_CHARS)
        except InvalidQuestionError:
            skipped[INVALID_QUESTION] += 1
            continue
        if not isinstance(image_path, str) or not image_path.strip():
            skipped[MISSING_IMAGE] += 1
            continue
        resolved = (folder / image_path).resolve()
        if resolved not in decoded:
            failed: Counter = Counter()
            found = read(resolved, failed, max_bytes, max_pixels)
            decoded[resolved] = found if found is not None else next(iter(failed))
        image = decoded[resolved]
        if isinstance(image, str):  # every line that names a bad image is a skipped line
            skipped[image] += 1
        else:
            samples.append(_question(image, question, f"{path}:{number}"))
            if limit is not None and len(samples) >= limit:
                break
    if not samples:
        detail = "has no lines" if lines == 0 else f"gave no (image, question) pair in {lines} lines"
        raise NoQuestionsError(f"{path} {detail} ({_describe(skipped)})", field="questions")
    return ImageQuestionSet(samples, dict(skipped))


def _pairs(images: ImageList) -> list[tuple[str, Image.Image | ImageFile]]:
    pairs = []
    for index, item in enumerate(images):
        source, image = item if isinstance(item, tuple) else (f"image {index}", item)
        if isinstance(image, ImageFile):
            pairs.append((str(source), image))
            continue
        if not isinstance(image, Image.Image):
            raise InvalidImageError(f"expected a PIL image, got {type(image).__name__}", field="images")
        pairs.append((str(source), to_rgb(image)))
    if not pairs:
        raise NoImagesError("no images to question", field="images")
    return pairs


def _decoded(image: Image.Image | ImageFile) -> Image.Image:
    return image.read() if isinstance(image, ImageFile) else image


def template_questions(images: ImageList, *, seed: int = 0) -> ImageQuestionSet:
    """The synthetic task's three templates (:func:`arr_coc.tasks.shapes_vqa.question_for`) for each image.

    For the embedded testbed, which answers those templates but cannot write questions.
    Subjects (a shape for ``colour``, a colour for ``shape`` and ``count``) are drawn
    per image from ``(seed, index)``; whether the image shows them does not matter, the
    answers are never used. Images given as :class:`ImageFile` are not read and give
    :class:`ImageFileQuestion` s.
    """
    samples = []
    colours = list(COLOURS)
    for index, (source, image) in enumerate(_pairs(images)):
        rng = np.random.default_rng([seed, index])
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour, counted = (colours[int(i)] for i in rng.integers(len(colours), size=2))
        for kind, subject in (("colour", shape), ("shape", colour), ("count", counted)):
            samples.append(_question(image, question_for(kind, subject), source))
    return ImageQuestionSet(samples, {})


_MARKER = re.compile(r"^\s*(?:[-*\u2022]+|\(?\d+[.):]|q(?:uestion)?\s*\d*\s*[.:)])\s*", re.IGNORECASE)
_QUOTES = "\"'\u201c\u201d\u2018\u2019`"


def parse_questions(text: str, n: int) -> list[str]:
    """Up to ``n`` distinct questions of a model's reply, one per line, in order.

    List markers (``1.``, ``2)``, ``-``, ``Q3:``) and quotes are removed; a line counts when it
    holds a ``?`` and is cut after the first one, so a preamble such as ``Here are three
    questions:`` is dropped.
    """
    found: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        line = _MARKER.sub("", line).strip().strip(_QUOTES).strip()
        if "?" not in line:
            continue
        question = line[: line.index("?") + 1].strip(_QUOTES + " ")
        key = question.casefold()
        if len(question) < 3 or len(question) > MAX_QUESTION_CHARS or key in seen:
            continue
        seen.add(key)
        found.append(question)
        if len(found) == n:
            break
    return found


def has_chat_template(processor) -> bool:
    """Whether ``processor`` (or its tokenizer) carries a chat template."""
    tokenizer = getattr(processor, "tokenizer", None)
    return bool(getattr(processor, "chat_template", None) or getattr(tokenizer, "chat_template", None))


def self_questions(
    pipeline: VLMPipeline,
    images: ImageList,
    n: int = 3,
    prompt: str = DEFAULT_PROMPT,
    max_new_tokens: int = 128,
    *,
    batch_size: int = 4,
) -> ImageQuestionSet:
    """Ask the VLM to write ``n`` short questions about each image; parse one per line.

    The VLM sees every visual token (method ``none``) and decodes greedily up to
    ``max_new_tokens``; ``prompt`` (``{n}`` filled in) is the user turn beside the image.
    An image it wrote no question for counts as ``no question written``. An
    :class:`ImageFile` is decoded for its batch only and gives :class:`ImageFileQuestion` s. Raises
    :class:`MissingChatTemplateError` when the model has no chat template (it is not
    instruction-tuned), :class:`NoQuestionsError` when no image got a question.
    """
    from arr_coc.vlm.types import AnswerRequest, GenerationParams

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidConfigError(f"n must be an int >= 1, got {n!r}", field="n")
    if batch_size < 1:
        raise InvalidConfigError(f"batch_size must be >= 1, got {batch_size}", field="batch_size")
    if not has_chat_template(pipeline.vlm.processor):
        raise MissingChatTemplateError(
            f"{pipeline.vlm.source} has no chat template, so it cannot be asked to write questions; "
            "use an instruction-tuned model, a question file, or the task's templates",
            field="model",
        )
    pairs = _pairs(images)
    text = prompt.replace("{n}", str(n))
    generation = GenerationParams(max_new_tokens=max_new_tokens)
    samples: list[ImageQuestion | ImageFileQuestion] = []
    skipped: Counter = Counter()
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        requests = [
            AnswerRequest(_decoded(image), text, method="none", budget=1.0, generation=generation) for _, image in chunk
        ]
        for (source, image), result in zip(chunk, pipeline.answer_batch(requests)):
            questions = parse_questions(result.answer, n)
            if not questions:
                skipped[NONE_WRITTEN] += 1
            samples.extend(_question(image, question, source) for question in questions)
    if not samples:
        raise NoQuestionsError(
            f"the model wrote no question for any of {len(pairs)} images; try another prompt or more max_new_tokens",
            field="questions",
        )
    return ImageQuestionSet(samples, dict(skipped))
