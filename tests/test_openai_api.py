"""The OpenAI-compatible routes on the real server, called with the official `openai` client."""

from __future__ import annotations

import functools
import http.server
import threading

import httpx
import openai
import pytest

from arr_coc.adaptive import DEFAULT_COVERAGE
from arr_coc.tasks.shapes_vqa import ShapesVQA
from arr_coc.variants import VARIANTS
from testkit.drawing import scene
from testkit.serving import b64_png, running_server

pytestmark = [pytest.mark.server, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("serve-openai"), ARR_COC_IMAGE_URL_HOSTS="127.0.0.1") as server:
        yield server


@pytest.fixture(scope="module")
def image_host(tmp_path_factory, sample):
    """A loopback web server with ``sample.png``, ``notes.txt`` and nothing else."""
    root = tmp_path_factory.mktemp("images")
    sample.image.save(root / "sample.png")
    (root / "notes.txt").write_text("not an image")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{web.server_address[1]}"
    web.shutdown()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def sample():
    return ShapesVQA(1, "heldout", seed=3)[0]


def messages(image_b64: str, question: str) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image_b64}"}},
                {"type": "text", "text": question},
            ],
        }
    ]


def test_models_are_the_variants(client):
    models = client.models.list().data
    assert [model.id for model in models] == list(VARIANTS) and "arr-coc-pre-25" in VARIANTS
    details = {model.id: model.model_extra["arr_coc"] for model in models}
    assert details["arr-coc-pre-25"] == {"method": "arr-coc", "budget": 0.25, "stage": "pre", "scorer": "trained"}
    assert details["divprune-25"] == {"method": "divprune", "budget": 0.25, "stage": "post"}  # reads no scorer
    assert details["arr-coc-auto"]["budget"] == "auto" and details["arr-coc-auto"]["coverage"] == DEFAULT_COVERAGE


def test_chat_completion_answers_like_answer(client, server, sample):
    image = b64_png(sample.image)
    done = client.chat.completions.create(model="arr-coc-25", messages=messages(image, sample.question), max_tokens=4)
    native = httpx.post(
        f"{server.url}/answer",
        json={"image": image, "question": sample.question, "variant": "arr-coc-25", "max_new_tokens": 4},
        timeout=120,
    ).json()
    assert done.object == "chat.completion" and done.model == "arr-coc-25" and len(done.choices) == 1
    assert done.choices[0].message.role == "assistant" and done.choices[0].message.content == native["answer"]
    assert done.choices[0].finish_reason in ("stop", "length")
    extension = done.model_extra["arr_coc"]
    assert extension["scorer"] == native["scorer"] == "trained"
    assert set(extension["cost"]) == set(native["cost"]) == {"held_s", "gpu_s", "vcpu_s", "gib_s", "dollars"}
    assert extension["cost"]["dollars"] > 0 and native["cost"]["dollars"] > 0
    usage = done.usage.model_dump()
    assert (
        usage["visual_tokens_kept"] == native["kept_tokens"] and usage["visual_tokens_total"] == native["total_tokens"]
    )
    assert usage["completion_tokens"] >= 1 and usage["prompt_tokens"] > usage["visual_tokens_kept"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_streaming_chunks_concatenate_to_the_answer(client, sample):
    image = b64_png(sample.image)
    whole = client.chat.completions.create(model="full", messages=messages(image, sample.question), max_tokens=6)
    stream = client.chat.completions.create(
        model="full", messages=messages(image, sample.question), max_tokens=6, stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)


def test_the_arr_coc_extension_picks_method_budget_and_stage(client, sample):
    image = b64_png(sample.image)
    done = client.chat.completions.create(
        model="arr-coc-25",
        messages=messages(image, sample.question),
        max_tokens=3,
        extra_body={"arr_coc": {"method": "uniform", "budget": 10, "stage": "pre"}},
    )
    assert done.model == "uniform@10@pre" and done.usage.model_dump()["visual_tokens_kept"] == 10


BAD = [
    ("unknown model", {"model": "gpt-4o"}, 422, "model", "unknown_variant"),
    (
        "remote image",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                        {"type": "text", "text": "What?"},
                    ],
                }
            ]
        },
        400,
        "messages",
        "invalid_image",
    ),
    (
        "no image",
        {"messages": [{"role": "user", "content": "What colour is the star?"}]},
        400,
        "messages",
        "invalid_image",
    ),
    ("corrupt image", {"messages": messages("aGVsbG8gd29ybGQ=", "What?")}, 400, "image", "invalid_image"),
    ("no question", {"messages": messages(b64_png(scene(64, 64)), "   ")}, 422, "messages", "invalid_question"),
    ("two choices", {"n": 2}, 422, "n", "validation_error"),
    ("temperature", {"temperature": 5}, 422, "temperature", "validation_error"),
    ("too many tokens", {"max_tokens": 10**6}, 422, "max_new_tokens", "validation_error"),
    ("bad budget", {"arr_coc": {"method": "arr-coc", "budget": 1.5}}, 422, "budget", "invalid_budget"),
    (
        "pre with divprune",
        {"arr_coc": {"method": "divprune", "budget": 0.2, "stage": "pre"}},
        422,
        "stage",
        "invalid_stage",
    ),
]


@pytest.mark.parametrize("name, change, status, param, code", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_openai_errors(client, server, sample, name, change, status, param, code):
    body = {"model": "arr-coc-25", "messages": messages(b64_png(sample.image), "What?"), "max_tokens": 2, **change}
    extension = {"arr_coc": body.pop("arr_coc")} if "arr_coc" in body else None
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(**body, extra_body=extension)
    assert caught.value.status_code == status
    error = caught.value.body if "message" in (caught.value.body or {}) else caught.value.body["error"]
    assert error["param"] == param and error["code"] == code and error["message"]
    assert httpx.get(f"{server.url}/livez").status_code == 200


def test_image_urls_of_allowed_hosts_are_fetched(client, image_host, sample):
    def url_message(url: str) -> list[dict]:
        return [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": sample.question},
                ],
            }
        ]

    fetched = client.chat.completions.create(
        model="arr-coc-25", messages=url_message(f"{image_host}/sample.png"), max_tokens=4
    )
    inline = client.chat.completions.create(
        model="arr-coc-25", messages=messages(b64_png(sample.image), sample.question), max_tokens=4
    )
    assert fetched.choices[0].message.content == inline.choices[0].message.content
    other_host = image_host.replace("127.0.0.1", "localhost")  # same server, a host name not on the list
    for url in (f"{image_host}/missing.png", f"{image_host}/notes.txt", f"{other_host}/sample.png"):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="arr-coc-25", messages=url_message(url), max_tokens=4)
        assert caught.value.body["code"] == "invalid_image" and caught.value.body["param"] == "messages", url
