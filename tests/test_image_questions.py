"""Images and questions without a dataset: folders, question files, the VLM's own questions, templates."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from arr_coc.errors import InvalidConfigError, MissingChatTemplateError, NoImagesError, NoQuestionsError
from arr_coc.tasks.image_questions import (
    BAD_JSON,
    DEFAULT_PROMPT,
    MISSING_IMAGE,
    MISSING_QUESTION,
    NONE_WRITTEN,
    NOT_AN_IMAGE,
    TOO_LARGE,
    UNREADABLE,
    ImageQuestionSet,
    load_images,
    load_question_file,
    parse_questions,
    self_questions,
    template_questions,
)
from arr_coc.tasks.shapes_vqa import COLOURS, SHAPES
from testkit.drawing import gradient, shapes


def image_folder(root: Path) -> Path:
    """Two good images (one in a subfolder, one RGBA), a corrupt one, a text file and a hidden file."""
    folder = root / "images"
    (folder / "sub").mkdir(parents=True)
    shapes(64, 48).save(folder / "a.png")
    gradient(40, 30).convert("RGBA").save(folder / "sub" / "b.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    shapes(16, 16).save(folder / ".hidden.png")
    return folder


def test_load_images_reads_a_folder_and_counts_what_it_skips(tmp_path):
    images, skipped = load_images(image_folder(tmp_path))
    assert [Path(source).name for source, _ in images] == ["a.png", "b.png"]
    assert all(image.mode == "RGB" for _, image in images)
    assert images[1][1].size == (40, 30)
    assert skipped == {UNREADABLE: 1, NOT_AN_IMAGE: 1}


def test_load_images_limit_and_pixel_limit(tmp_path):
    folder = image_folder(tmp_path)
    images, _ = load_images(folder, limit=1)
    assert len(images) == 1
    images, skipped = load_images(folder, max_pixels=2000)  # a.png (64x48) is over it, b.png (40x30) is not
    assert [Path(source).name for source, _ in images] == ["b.png"]
    assert skipped[TOO_LARGE] == 1


def test_load_images_refuses_folders_without_readable_images(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("# nothing")
    with pytest.raises(NoImagesError, match="no image files") as error:
        load_images(empty)
    assert error.value.field == "images"
    with pytest.raises(NoImagesError, match="no such folder"):
        load_images(tmp_path / "missing")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"nope")
    (broken / "y.png").write_bytes(b"")
    with pytest.raises(NoImagesError, match="none of the 2 image files.*unreadable image: 2"):
        load_images(broken)
    with pytest.raises(InvalidConfigError):
        load_images(tmp_path, limit=0)


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_question_file_resolves_relative_paths_and_counts_bad_lines(tmp_path):
    folder = image_folder(tmp_path)
    absolute = tmp_path / "elsewhere.png"
    shapes(32, 32, seed=4).save(absolute)
    path = write_lines(
        folder / "questions.jsonl",
        [
            {"image": "a.png", "question": " What colour is the circle? ", "answer": "red"},
            {"image": "sub/b.png", "question": "What is this?"},
            {"image": str(absolute), "question": "How many objects are there?"},
            {"image": "a.png", "question": "Is it daytime?"},
            "{not json",
            "[1, 2]",
            "",
            {"image": "a.png"},
            {"image": "a.png", "question": "   "},
            {"question": "Where?"},
            {"image": "broken.jpg", "question": "Why?"},
            {"image": "missing.png", "question": "Why?"},
        ],
    )
    questions = load_question_file(path)
    assert isinstance(questions, ImageQuestionSet)
    assert [q.question for q in questions] == [
        "What colour is the circle?",
        "What is this?",
        "How many objects are there?",
        "Is it daytime?",
    ]
    assert [q.source for q in questions] == [f"{path}:{n}" for n in (1, 2, 3, 4)]
    assert questions.samples[0].image is questions.samples[3].image  # one decode per image file
    assert questions.samples[1].image.size == (40, 30) and questions.samples[1].image.mode == "RGB"
    assert questions.skipped == {BAD_JSON: 2, MISSING_QUESTION: 2, MISSING_IMAGE: 1, UNREADABLE: 2}
    assert len(load_question_file(path, limit=2)) == 2


def test_question_file_fails_only_when_every_line_fails(tmp_path):
    image_folder(tmp_path)
    bad = write_lines(
        tmp_path / "images" / "bad.jsonl", ["{oops", {"image": "a.png"}, {"image": "x.png", "question": "Q?"}]
    )
    with pytest.raises(NoQuestionsError, match="no \\(image, question\\) pair in 3 lines") as error:
        load_question_file(bad)
    assert error.value.field == "questions"
    assert "bad json: 1" in str(error.value) and "missing question: 1" in str(error.value)
    empty = write_lines(tmp_path / "empty.jsonl", [""])
    with pytest.raises(NoQuestionsError, match="has no lines"):
        load_question_file(empty)
    with pytest.raises(NoQuestionsError, match="cannot read"):
        load_question_file(tmp_path / "missing.jsonl")


def test_template_questions_are_the_synthetic_tasks_templates():
    images = [("x.png", shapes(32, 32)), ("y.png", gradient(32, 32))]
    questions = template_questions(images, seed=1)
    assert len(questions) == 6 and questions.skipped == {}
    assert [q.source for q in questions] == ["x.png"] * 3 + ["y.png"] * 3
    first = [q.question for q in questions][:3]
    assert first[0].startswith("What colour is the ") and first[0][len("What colour is the ") : -1] in SHAPES
    assert first[1].startswith("What shape is the ") and first[1].split()[4] in COLOURS
    assert first[2].startswith("How many ") and first[2].split()[2] in COLOURS
    assert [q.question for q in template_questions(images, seed=1)] == [q.question for q in questions]
    bare = template_questions([shapes(16, 16)])
    assert bare.samples[0].source == "image 0"
    with pytest.raises(NoImagesError):
        template_questions([])


def test_parse_questions_takes_one_question_per_line():
    reply = (
        "Here are three questions:\n1. What colour is the car?\n2) How many people are there?\n"
        '- What colour is the car?\nQ4: Is it raining? Yes.\n"Where is the dog?"\nA statement.\n'
    )
    assert parse_questions(reply, 10) == [
        "What colour is the car?",
        "How many people are there?",
        "Is it raining?",
        "Where is the dog?",
    ]
    assert parse_questions(reply, 2) == ["What colour is the car?", "How many people are there?"]
    assert parse_questions("red", 3) == []


class WritingPipeline:
    """Stands in for a VLM that writes questions: replies with a fixed text per image width."""

    def __init__(self, replies: dict[int, str], chat_template: str | None = "{{ messages }}") -> None:
        processor = SimpleNamespace(chat_template=chat_template, tokenizer=SimpleNamespace(chat_template=None))
        self.vlm = SimpleNamespace(processor=processor, source="writer")
        self.replies = replies
        self.requests = []

    def answer_batch(self, requests):
        self.requests.extend(requests)
        return [SimpleNamespace(answer=self.replies[r.image.width]) for r in requests]


def test_self_questions_asks_the_model_and_parses_its_lines():
    pipeline = WritingPipeline({32: "1. What is red?\n2. Where is it?\n3. Why?", 40: "I cannot say."})
    images = [("a.png", shapes(32, 32)), ("b.png", gradient(40, 30)), ("c.png", shapes(32, 32, seed=2))]
    questions = self_questions(pipeline, images, n=2, max_new_tokens=50, batch_size=2)
    assert [(q.source, q.question) for q in questions] == [
        ("a.png", "What is red?"),
        ("a.png", "Where is it?"),
        ("c.png", "What is red?"),
        ("c.png", "Where is it?"),
    ]
    assert questions.skipped == {NONE_WRITTEN: 1}
    request = pipeline.requests[0]
    assert request.question == DEFAULT_PROMPT.replace("{n}", "2") and "{n}" not in request.question
    assert (request.method, request.budget, request.generation.max_new_tokens) == ("none", 1.0, 50)
    custom = self_questions(pipeline, images[:1], n=1, prompt="Ask {n} thing.")
    assert len(custom) == 1 and pipeline.requests[-1].question == "Ask 1 thing."


def test_self_questions_needs_a_chat_template_and_some_question():
    images = [shapes(32, 32)]
    with pytest.raises(MissingChatTemplateError) as error:
        self_questions(WritingPipeline({32: "What?"}, chat_template=None), images)
    assert error.value.field == "model"
    with pytest.raises(NoQuestionsError, match="wrote no question"):
        self_questions(WritingPipeline({32: "nothing"}), images)
    with pytest.raises(InvalidConfigError):
        self_questions(WritingPipeline({32: "What?"}), images, n=0)


def test_the_testbed_cannot_write_questions(testbed_pipeline, monkeypatch):
    """The testbed has a chat template but answers in task words: a clear error, not empty data."""
    pipeline = testbed_pipeline()
    image = Image.new("RGB", (56, 56), (200, 30, 30))
    with pytest.raises(NoQuestionsError, match="wrote no question"):
        self_questions(pipeline, [image], n=2, max_new_tokens=8)
    monkeypatch.setattr(pipeline.vlm.processor, "chat_template", None)
    monkeypatch.setattr(pipeline.vlm.processor.tokenizer, "chat_template", None)
    with pytest.raises(MissingChatTemplateError):
        self_questions(pipeline, [image], n=2)
