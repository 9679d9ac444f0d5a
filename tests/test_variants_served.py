"""Variants in production, served: the traffic split sticky per caller, the variant and cost of every answer in
every response shape, ``/metrics`` and the W&B serve runs; a bad split or price stops the server at start-up."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest

from testkit.drawing import scene
from testkit.serving import Server, b64_png
from training_hooks.comparison.runfile import find_run_files, read_run

pytestmark = [pytest.mark.server, pytest.mark.timeout(600)]
SPLIT = "arr-coc-25=0.5,full=0.5"


def metric(text: str, name: str, variant: str) -> float:
    found = re.search(rf'^{name}\{{[^}}]*variant="{re.escape(variant)}"[^}}]*\}} ([0-9.e+-]+)$', text, re.M)
    assert found, f"{name}{{variant={variant}}} not in /metrics"
    return float(found[1])


def test_the_split_is_sticky_per_caller_and_every_answer_says_its_variant_and_cost(tmp_path):
    server = Server(tmp_path, ARR_COC_TRAFFIC=SPLIT, ARR_COC_WANDB="1", ARR_COC_WANDB_WINDOW_S="1")
    question = {"image": b64_png(scene(224, 168)), "question": "Where?", "max_new_tokens": 2}
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=120) as http:
            listed = http.get("/v1/models").json()["arr_coc"]
            assert listed["traffic"] == {"arr-coc-25": 0.5, "full": 0.5}

            def variant_of(user: str) -> str:
                response = http.post("/answer", json=question, headers={"X-Arr-Coc-User": user})
                assert response.status_code == 200, response.text
                body = response.json()
                assert body["cost"]["dollars"] > 0 and body["cost"]["held_s"] > 0, body
                return body["variant"]

            seen = {user: variant_of(user) for user in (f"user-{i}" for i in range(12))}
            assert set(seen.values()) == {"arr-coc-25", "full"}, seen
            assert all(variant_of(user) == variant for user, variant in list(seen.items())[:4]), "sticky"
            named = http.post("/answer", json={**question, "variant": "divprune-25"}, headers={"X-Arr-Coc-User": "x"})
            assert named.json()["variant"] == "divprune-25"

            user = next(iter(seen))
            chat = {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{question['image']}"}},
                            {"type": "text", "text": "Where?"},
                        ],
                    }
                ],
                "max_tokens": 2,
            }
            completion = http.post("/v1/chat/completions", json=chat, headers={"X-Arr-Coc-User": user}).json()
            assert completion["model"] == seen[user] and completion["arr_coc"]["cost"]["dollars"] > 0
            with http.stream("POST", "/answer_stream", json=question, headers={"X-Arr-Coc-User": user}) as streamed:
                done = [line for line in streamed.iter_lines() if line.startswith("data:")][-1]
            assert json.loads(done[5:])["variant"] == seen[user]

            exposed = http.get("/metrics").text
            answered = {v: list(seen.values()).count(v) for v in ("arr-coc-25", "full")}
            for variant in answered:
                assert metric(exposed, "arr_coc_traffic_assigned_total", variant) >= answered[variant]
                dollars = metric(exposed, "arr_coc_cost_dollars_total", variant)
                answers = metric(exposed, "arr_coc_answers_total", variant)
                per_1k = metric(exposed, "arr_coc_cost_per_1k_answers_dollars", variant)
                assert dollars > 0 and per_1k == pytest.approx(1000 * dollars / answers, rel=1e-6)
            time.sleep(2.5)  # let a window close
    finally:
        server.stop()
    runs = {run.group: run for run in map(read_run, find_run_files(tmp_path / "wandb"))}
    for variant in ("arr-coc-25", "full"):
        run = runs[variant]
        assert run.config["traffic"] == {"split": SPLIT, "share": 0.5}
        assert run.config["pricing"]["gpus"] == 0 and run.config["pricing"]["price_gpu_s"] == 0.0001867
        assert run.summary["cost_per_1k_answers"] > 0
        assert any(row.get("serve/cost/dollars_per_1k_answers", 0) > 0 for row in run.history)
    assert runs["divprune-25"].config["traffic"]["share"] == 0.0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ARR_COC_TRAFFIC": "arr-coc-25=0.5,nope=0.5"}, "unknown variant 'nope'"),
        ({"ARR_COC_TRAFFIC": "full=0"}, "positive number"),
        ({"ARR_COC_PRICE_GPU_S": "-1"}, "price_gpu_s"),
    ],
)
def test_a_bad_split_or_price_stops_the_server_at_start_up(tmp_path, env, message):
    server = Server(tmp_path, **env)
    try:
        with pytest.raises(RuntimeError, match="bentoml serve exited") as exited:
            server.wait_ready()
        assert message in str(exited.value)
    finally:
        server.stop()
