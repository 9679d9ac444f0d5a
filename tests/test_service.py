"""The real server (`bentoml serve`) with the testbed model, called over HTTP."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import os
import re
import signal
import struct
import zlib

import httpx
import pytest
from PIL import Image

from arr_coc.heatmap import legend_height
from testkit.drawing import gradient, noise, scene, shapes
from testkit.serving import Server, b64_png, running_server

pytestmark = [pytest.mark.server, pytest.mark.timeout(900)]


IMAGE_LIMIT = 1_000_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("serve"), ARR_COC_MAX_IMAGE_BYTES=str(IMAGE_LIMIT)) as server:
        yield server


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


SAMPLE = b64_png(scene(448, 336))
ANSWER_FIELDS = {
    "answer",
    "variant",
    "kept_tokens",
    "total_tokens",
    "kept_ratio",
    "timings_ms",
    "finish_reason",
    "scorer",
    "cost",
    "request_id",
}


def body(**overrides):
    return {"image": SAMPLE, "question": "Where is the red house?", "max_new_tokens": 6, **overrides}


def test_probes(http):
    assert http.get("/livez").status_code == 200
    assert http.get("/readyz").status_code == 200


def test_answer(http):
    response = http.post("/answer", json=body())
    assert response.status_code == 200, response.text
    result = response.json()
    assert set(result) == ANSWER_FIELDS
    assert result["variant"] == "arr-coc-25" and result["total_tokens"] == 192 and result["kept_tokens"] == 48
    assert result["kept_ratio"] == pytest.approx(0.25) and result["scorer"] == "trained"  # the shipped one
    assert {"relevance", "vision", "selection", "prefill", "decode"} <= set(result["timings_ms"])
    assert isinstance(result["answer"], str) and re.fullmatch(r"[0-9a-f]{32}", result["request_id"])
    cost = result["cost"]  # its share of both runners' busy time, on a CPU instance (no GPU share here)
    assert (
        cost["gpu_s"] == 0
        and 0 < cost["held_s"] * 1000 <= result["timings_ms"]["total"] + result["timings_ms"]["relevance"]
    )
    assert cost["vcpu_s"] == pytest.approx(8 * cost["held_s"]) and cost["gib_s"] == pytest.approx(32 * cost["held_s"])


def test_data_uri_variant_and_method_budget(http):
    uri = "data:image/png;base64," + SAMPLE
    full = http.post("/answer", json=body(image=uri, variant="full")).json()
    assert full["variant"] == "full" and full["kept_tokens"] == full["total_tokens"] == 192
    custom = http.post("/answer", json=body(method="uniform", budget=10)).json()
    assert custom["variant"] == "uniform@10" and custom["kept_tokens"] == 10


def test_a_second_question_about_an_image_is_served_from_the_vision_cache(http):
    image = b64_png(shapes(300, 220, seed=9))
    first = http.post("/answer", json=body(image=image, question="What is red?", variant="divprune-25")).json()
    second = http.post("/answer", json=body(image=image, question="What is blue?", variant="divprune-25")).json()
    assert first["kept_tokens"] == second["kept_tokens"]
    hits = [
        line
        for line in http.get("/metrics").text.splitlines()
        if line.startswith('arr_coc_vision_cache_total{result="hit"}')
    ]
    assert hits and float(hits[0].split()[-1]) >= 1


def test_pre_encoder_variants_and_stage_field(http):
    named = http.post("/answer", json=body(variant="arr-coc-pre-25"))
    assert named.status_code == 200, named.text
    assert named.json()["variant"] == "arr-coc-pre-25" and named.json()["kept_tokens"] == 48
    staged = http.post("/answer", json=body(method="uniform", budget=10, stage="pre")).json()
    assert staged["variant"] == "uniform@10@pre" and staged["kept_tokens"] == 10
    post = http.post("/answer", json=body(method="uniform", budget=10)).json()
    assert staged["timings_ms"]["vision"] > 0 and post["timings_ms"]["vision"] > 0


def test_multipart_upload_equals_json(http):
    image = base64.b64decode(SAMPLE)
    upload = http.post(
        "/answer",
        files={"image": ("scene.png", image, "image/png")},
        data={"question": "Where is the red house?", "max_new_tokens": "6", "budget": "0.5"},
    )
    assert upload.status_code == 200, upload.text
    assert upload.json()["answer"] == http.post("/answer", json=body(budget=0.5)).json()["answer"]
    relevance = http.post("/relevance", files={"image": ("s.png", image, "image/png")}, data={"question": "42"})
    assert relevance.status_code == 200 and relevance.json()["kept_tokens"] == 48
    bad = http.post("/answer", files={"image": ("x.png", b"not a png", "image/png")}, data={"question": "q"})
    assert bad.status_code == 400 and bad.json()["field"] == "image"


def sse_events(text: str) -> list[tuple[str, dict]]:
    """``(event name, data)`` of each server-sent event; the name is ``message`` when none is given."""
    events = []
    for block in filter(str.strip, text.split("\n\n")):
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((fields.get("event", "message"), json.loads(fields["data"])))
    return events


def test_uploaded_form_streams_and_ends_with_the_public_answer_body(http):
    image = base64.b64decode(SAMPLE)
    form = {"question": "Where is the red house?", "max_new_tokens": "6"}
    plain = http.post("/answer", json=body())
    with http.stream(
        "POST", "/answer_stream", files={"image": ("scene.png", image, "image/png")}, data=form
    ) as response:
        assert response.status_code == 200
        events = sse_events("".join(response.iter_text()))
    deltas = [data["delta"] for name, data in events if name == "message"]
    (done,) = [data for name, data in events if name == "done"]
    assert "".join(deltas) == done["answer"] == plain.json()["answer"]
    assert set(done) == set(plain.json()) == ANSWER_FIELDS
    assert done["kept_tokens"] == 48 and done["kept_ratio"] == 0.25 and done["request_id"] != plain.json()["request_id"]


def test_openapi_document_is_complete(http):
    schema = http.get("/docs.json").json()
    from importlib.metadata import version

    assert schema["info"]["version"] == version("arr-coc")
    answer = schema["paths"]["/answer"]["post"]
    assert {"200", "400", "413", "415", "422", "503"} <= set(answer["responses"])
    assert answer["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    content = answer["requestBody"]["content"]
    assert content["multipart/form-data"]["schema"]["properties"]["image"]["format"] == "binary"
    properties = content["application/json"]["schema"]["properties"]
    assert "arr-coc-25" in properties["variant"]["enum"] and "cdpruner" in properties["method"]["enum"]
    assert set(properties["stage"]["anyOf"][0]["enum"]) == {"post", "pre"}
    for path in ("/answer_stream", "/relevance", "/v1/chat/completions", "/v1/models", "/livez", "/readyz", "/metrics"):
        assert path in schema["paths"], path
    assert "text/event-stream" in schema["paths"]["/answer_stream"]["post"]["responses"]["200"]["content"]


def test_every_route_feeds_the_metrics(http):
    def count(route: str, status: str) -> float:
        found = re.search(
            rf'arr_coc_requests_total{{route="{route}",status="{status}"}} (\S+)', http.get("/metrics").text
        )
        return float(found[1]) if found else 0.0

    before = {route: count(route, "200") for route in ("/relevance", "/answer_stream", "/v1/models")}
    bad_before = count("/relevance", "422")
    assert http.post("/relevance", json={"image": SAMPLE, "question": "Where?"}).status_code == 200
    assert http.post("/answer_stream", json=body()).status_code == 200
    assert http.get("/v1/models").status_code == 200
    assert http.post("/relevance", json={"image": SAMPLE, "question": "Where?", "budget": 0}).status_code == 422
    assert all(count(route, "200") == before[route] + 1 for route in before)
    assert count("/relevance", "422") == bad_before + 1


def test_protocol_errors_are_json_too(http):
    wrong_method = http.get("/answer")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"] == "method_not_allowed"
    assert "POST" in wrong_method.headers["allow"]
    missing = http.post("/no-such-route", json={})
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert http.get("/").status_code == 200 and "text/html" in http.get("/").headers["content-type"]


@pytest.mark.parametrize("budget", [True, "0.5", [10], None])
def test_budgets_are_json_numbers_only(http, budget):
    response = http.post("/answer", json=body(budget=budget))
    if budget is None:  # null means the variant's own budget
        assert response.status_code == 200
        return
    assert response.status_code == 422 and response.json()["field"] == "budget", response.text


def test_bodies_over_the_limit_get_413_and_the_server_keeps_answering(http):
    raw = os.urandom(IMAGE_LIMIT + 1000)  # the module's server takes images of up to IMAGE_LIMIT bytes
    in_json = http.post("/answer", json=body(image=base64.b64encode(raw * 2).decode()))
    assert in_json.status_code == 413 and in_json.json()["error"] == "request_too_large", in_json.text
    chunked = http.post(
        "/answer",
        content=iter([b'{"image": "', b"A" * IMAGE_LIMIT, b"A" * IMAGE_LIMIT, b'"}']),
        headers={"content-type": "application/json"},
    )
    assert chunked.status_code == 413 and chunked.json()["error"] == "request_too_large"
    upload = http.post("/answer", files={"image": ("big.png", raw, "image/png")}, data={"question": "q"})
    assert upload.status_code == 413 and upload.json() == {
        "error": "image_too_large",
        "field": "image",
        "detail": upload.json()["detail"],
    }
    assert http.post("/answer", json=body()).status_code == 200


def test_auto_budget_is_served_and_agrees_between_routes(http):
    answered = http.post("/answer", json=body(variant="arr-coc-auto"))
    assert answered.status_code == 200, answered.text
    mapped = http.post("/relevance", json={"image": SAMPLE, "question": body()["question"], "variant": "arr-coc-auto"})
    assert answered.json()["variant"] == mapped.json()["variant"] == "arr-coc-auto"
    assert 1 <= answered.json()["kept_tokens"] == mapped.json()["kept_tokens"] < answered.json()["total_tokens"]
    bounded = http.post("/answer", json=body(budget="auto", coverage=0.99, max_tokens=7)).json()
    assert bounded["kept_tokens"] == 7 and bounded["variant"] == "arr-coc@auto(coverage=0.99,max=7)"
    wide = http.post("/relevance", json={"image": SAMPLE, "question": "Where?", "budget": "auto", "coverage": 0.95})
    narrow = http.post("/relevance", json={"image": SAMPLE, "question": "Where?", "budget": "auto", "coverage": 0.3})
    assert narrow.json()["kept_tokens"] < wide.json()["kept_tokens"]


def test_relevance(http):
    result = http.post("/relevance", json={"image": SAMPLE, "question": "Where is the sun?", "budget": 0.1}).json()
    assert result["grid"] == [12, 16] and len(result["relevance"]) == 12 and len(result["relevance"][0]) == 16
    assert result["kept_tokens"] == len(result["kept"]) == 19 and result["total_tokens"] == 192
    assert all(0.0 <= v <= 1.0 for row in result["relevance"] for v in row)
    flat = [v for row in result["relevance"] for v in row]
    dropped = [v for i, v in enumerate(flat) if i not in result["kept"]]
    assert flat.index(max(flat)) in result["kept"]  # arr-coc's first pick is the most relevant token
    assert sum(flat[i] for i in result["kept"]) / 19 > sum(dropped) / len(dropped)
    heatmap = Image.open(io.BytesIO(base64.b64decode(result["heatmap_png"])))
    assert heatmap.size == (448, 336 + legend_height(448))  # the overlay with its legend strip below


@pytest.mark.parametrize("method", ["divprune", "cdpruner", "uniform", "random"])
def test_relevance_with_every_method(http, method):
    result = http.post("/relevance", json={"image": SAMPLE, "question": "Where?", "method": method, "budget": 12})
    assert result.status_code == 200, result.text
    kept = result.json()["kept"]
    assert len(kept) == len(set(kept)) == 12 and kept == sorted(kept)


def test_stream_concatenates_to_the_answer(http):
    plain = http.post("/answer", json=body()).json()
    with http.stream("POST", "/answer_stream", json=body()) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    events = [block for block in text.split("\n\n") if block.strip()]
    deltas = [json.loads(e.removeprefix("data: "))["delta"] for e in events if e.startswith("data: ")]
    done = [e for e in events if e.startswith("event: done")]
    assert "".join(deltas) == plain["answer"]
    assert len(done) == 1 and json.loads(done[0].split("data: ", 1)[1])["answer"] == plain["answer"]


def test_concurrent_requests_form_batches_and_match_one_by_one(http):
    images = [scene(448, 336), shapes(300, 200, seed=1), gradient(200, 260), noise(224, 224, seed=2)]
    requests = [
        body(
            image=b64_png(images[i % 4]),
            question=f"What is in part {i}?",
            budget=[0.1, 0.25, 0.5, 20][i % 4],
            max_new_tokens=3 + i % 4,
        )
        for i in range(16)
    ]
    sequential = [http.post("/answer", json=r).json() for r in requests]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        concurrent_results = list(pool.map(lambda r: http.post("/answer", json=r).json(), requests))
    for alone, together in zip(sequential, concurrent_results):
        assert together["answer"] == alone["answer"]
        assert together["kept_tokens"] == alone["kept_tokens"]
    metrics = http.get("/metrics").text
    for runner in ("relevance", "vlm"):
        ones = float(re.search(rf'arr_coc_runner_batch_size_bucket{{le="1.0",runner="{runner}"}} (\S+)', metrics)[1])
        count = float(re.search(rf'arr_coc_runner_batch_size_count{{runner="{runner}"}} (\S+)', metrics)[1])
        assert count > ones, f"no batch larger than 1 formed in the {runner} runner"
    assert "arr_coc_kept_ratio_bucket" in metrics and "arr_coc_stage_latency_seconds_bucket" in metrics


def _png_header(width: int, height: int) -> str:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


def _truncated() -> str:
    data = base64.b64decode(b64_png(noise(256, 256)))
    return base64.b64encode(data[: len(data) // 2]).decode()


BAD_INPUTS = [
    ("corrupt-bytes", body(image=base64.b64encode(b"\x89PNG garbage" * 10).decode()), 400, "invalid_image", "image"),
    ("not-base64", body(image="%%%not base64%%%"), 400, "invalid_image", "image"),
    ("truncated-png", body(image=_truncated()), 400, "invalid_image", "image"),
    ("decompression-bomb", body(image=_png_header(40000, 40000)), 413, "image_too_large", "image"),
    ("huge-dimensions", body(image=_png_header(100000, 100000)), 413, "image_too_large", "image"),
    ("extreme-aspect-ratio", body(image=b64_png(Image.new("RGB", (2100, 7), "red"))), 400, "invalid_image", "image"),
    ("zero-size", body(image=_png_header(0, 0)), 400, "invalid_image", "image"),
    ("not-an-image-uri", body(image="data:text/plain;base64,aGVsbG8="), 400, "invalid_image", "image"),
    ("empty-question", body(question=""), 422, "validation_error", "question"),
    ("blank-question", body(question="   "), 422, "invalid_question", "question"),
    ("long-question", body(question="why " * 2000), 422, "validation_error", "question"),
    ("budget-zero", body(budget=0), 422, "invalid_budget", "budget"),
    ("budget-ratio-above-one", body(budget=1.5), 422, "invalid_budget", "budget"),
    ("budget-negative", body(budget=-3), 422, "invalid_budget", "budget"),
    ("budget-on-full", body(variant="full", budget=10), 422, "invalid_budget", "budget"),
    ("budget-word", body(budget="half"), 422, "validation_error", "budget"),
    ("coverage-above-one", body(budget="auto", coverage=1.5), 422, "invalid_budget", "coverage"),
    ("coverage-zero", body(variant="arr-coc-auto", coverage=0), 422, "invalid_budget", "coverage"),
    ("coverage-without-auto", body(budget=0.5, coverage=0.5), 422, "invalid_budget", "coverage"),
    ("max-below-min", body(budget="auto", min_tokens=9, max_tokens=3), 422, "invalid_budget", "max_tokens"),
    ("unknown-variant", body(variant="best-ever"), 422, "unknown_variant", "variant"),
    ("unknown-method", body(method="magic"), 422, "unknown_method", "method"),
    ("huge-variant-name", body(variant="v" * 100_000), 422, "validation_error", "variant"),
    ("unknown-stage", body(stage="middle"), 422, "validation_error", "stage"),
    ("pre-needs-no-features", body(method="divprune", stage="pre"), 422, "invalid_stage", "stage"),
    ("max-new-tokens", body(max_new_tokens=100000), 422, "validation_error", "max_new_tokens"),
    ("temperature", body(temperature=-1), 422, "validation_error", "temperature"),
    ("unknown-field", body(colour="red"), 422, "validation_error", "colour"),
    ("missing-image", {"question": "where?"}, 422, "validation_error", "image"),
]


GENERATION_ONLY = ("max-new-tokens", "temperature")
BAD_CASES = [
    (route, *case)
    for route in ("/answer", "/answer_stream", "/relevance")
    for case in BAD_INPUTS
    if not (route == "/relevance" and case[0] in GENERATION_ONLY)
]


@pytest.mark.parametrize(
    "route, name, payload, status, kind, field", BAD_CASES, ids=[f"{c[0]}-{c[1]}" for c in BAD_CASES]
)
def test_bad_input_gets_a_clear_4xx(http, route, name, payload, status, kind, field):
    if route == "/relevance":
        payload = {k: v for k, v in payload.items() if k != "max_new_tokens"}
    response = http.post(route, json=payload)
    assert response.status_code == status, response.text
    error = response.json()
    assert set(error) == {"error", "field", "detail"}
    assert error["error"] == kind and error["field"] == field and error["detail"]


def test_malformed_json_and_wrong_content_type(http):
    response = http.post("/answer", content=b'{"image": "abc"', headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"] == "malformed_json"
    response = http.post("/answer", content=b"hello", headers={"content-type": "text/plain"})
    assert response.status_code == 415 and response.json()["error"] == "unsupported_media_type"


def test_limits_are_in_the_openapi_schema(http):
    schema = http.get("/docs.json").json()
    text = json.dumps(schema)
    assert '"maxLength": 2000' in text  # question
    assert "/answer" in schema["paths"] and "/relevance" in schema["paths"]


def test_server_keeps_answering_after_bad_input(http):
    for _, payload, *_ in BAD_INPUTS:
        http.post("/answer", json=payload)
    assert http.post("/answer", json=body()).status_code == 200
    assert http.get("/livez").status_code == 200


def test_hung_runner_gives_503_and_the_server_recovers(tmp_path):
    server = Server(tmp_path, ARR_COC_RUNNER_TIMEOUT_S="4")
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60) as http:
            assert http.post("/answer", json=body()).status_code == 200
            runner = server.child_pids("vlm-runner")
            assert runner
            for pid in runner:
                os.kill(pid, signal.SIGSTOP)
            try:
                hung = http.post("/answer", json=body())
                assert http.get("/livez").status_code == 200
            finally:
                for pid in runner:
                    os.kill(pid, signal.SIGCONT)
            assert hung.status_code == 503, hung.text
            assert hung.json() == {"error": "runner_unavailable", "field": None, "detail": hung.json()["detail"]}
            assert http.post("/answer", json=body()).status_code == 200
            errors = re.search(r'arr_coc_errors_total{kind="runner_unavailable"} (\S+)', http.get("/metrics").text)
            assert errors and float(errors[1]) >= 1
    finally:
        server.stop()
