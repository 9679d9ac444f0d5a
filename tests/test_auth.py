"""API keys: the middleware alone, then the real server with ARR_COC_API_KEY set (plain HTTP and the openai client)."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from pydantic import SecretStr

from front.auth import BearerAuth, authorized, parse_keys
from serving.settings import ServerSettings
from testkit.drawing import scene
from testkit.serving import b64_png, running_server

pytestmark = [pytest.mark.server, pytest.mark.timeout(900)]
KEYS = parse_keys(" alpha-key , beta-key ,, ")


async def ok_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def call(path: str, authorization: str | None = None) -> httpx.Response:
    async def go():
        transport = httpx.ASGITransport(app=BearerAuth(ok_app, keys=KEYS))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            headers = {} if authorization is None else {"Authorization": authorization}
            return await client.post(path, headers=headers)

    return asyncio.run(go())


def test_keys_and_headers():
    assert KEYS == (b"alpha-key", b"beta-key") and parse_keys("") == ()
    assert authorized(b"Bearer alpha-key", KEYS) and authorized(b"bearer beta-key", KEYS)
    for header in (None, b"", b"Bearer", b"Bearer ", b"Basic alpha-key", b"Bearer alpha", b"Bearer alpha-key2"):
        assert not authorized(header, KEYS), header
    assert not authorized(b"Bearer anything", ())


@pytest.mark.parametrize("path", ["/answer", "/relevance", "/docs.json", "/v1/chat/completions", "/static"])
def test_every_route_but_the_probes_metrics_and_page_needs_a_key(path):
    refused = call(path)
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    body = refused.json()
    if path.startswith("/v1/"):
        assert body["error"]["code"] == "invalid_api_key" and body["error"]["type"] == "invalid_request_error"
    else:
        assert body["error"] == "unauthorized" and "Authorization: Bearer" in body["detail"]
    assert call(path, "Bearer wrong").status_code == 401
    assert call(path, "Bearer beta-key").text == "ok"


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/metrics", "/", "/static/app.js"])
def test_probes_metrics_and_the_page_stay_open(path):
    assert call(path).text == "ok"


def test_the_key_is_a_secret_setting(monkeypatch):
    monkeypatch.setenv("ARR_COC_API_KEY", "k1,k2")
    settings = ServerSettings()
    assert isinstance(settings.api_key, SecretStr) and "k1" not in repr(settings)
    assert parse_keys(settings.api_key.get_secret_value()) == (b"k1", b"k2")


def test_the_served_api_with_keys(tmp_path):
    with running_server(tmp_path, ARR_COC_API_KEY="first-key,second-key") as server:
        body = {"image": b64_png(scene(160, 120)), "question": "Where?", "max_new_tokens": 2}
        assert httpx.get(f"{server.url}/livez").status_code == 200
        refused = httpx.post(f"{server.url}/answer", json=body, timeout=120)
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
        answered = httpx.post(
            f"{server.url}/answer", json=body, timeout=120, headers={"Authorization": "Bearer second-key"}
        )
        assert answered.status_code == 200, answered.text
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="nope", max_retries=0).models.list()
        models = openai.OpenAI(base_url=f"{server.url}/v1", api_key="first-key", max_retries=0).models.list()
        assert "arr-coc-25" in [m.id for m in models]
