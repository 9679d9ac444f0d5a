"""Multipart uploads for the JSON API: ``curl -F image=@photo.jpg -F question=...``.

:class:`MultipartToJson` turns a ``multipart/form-data`` request on an API route into
the JSON body the route documents (the file base64-encoded, numbers parsed) before
BentoML sees it, so uploads and JSON share one schema, one validation and one error
body. BentoML's own multipart handling would fetch URLs given in file fields; this
never fetches anything.
"""

from __future__ import annotations

import base64
import json

from starlette.datastructures import UploadFile
from starlette.requests import Request

from runners.http_errors import error_response

STRING_FIELDS = {"question", "variant", "method", "image"}
LIST_FIELDS = {"stop"}


def _value(name: str, raw: str):
    if name in STRING_FIELDS:
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


async def form_to_json(request: Request, max_bytes: int) -> dict:
    """The form's fields as the JSON body of the route."""
    form = await request.form(max_part_size=max_bytes + 1)
    body: dict = {}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            data = await value.read()
            value = base64.b64encode(data).decode()
        else:
            value = _value(name, value)
        if name in LIST_FIELDS:
            body.setdefault(name, []).append(value)
        else:
            body[name] = value
    return body


class MultipartToJson:
    """ASGI middleware: multipart requests on ``api_paths`` become JSON requests."""

    def __init__(self, app, api_paths: tuple[str, ...], max_bytes: int) -> None:
        self.app = app
        self.api_paths = api_paths
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        headers = dict(scope.get("headers", [])) if scope["type"] == "http" else {}
        if scope.get("path") not in self.api_paths or not headers.get(b"content-type", b"").startswith(
            b"multipart/form-data"
        ):
            await self.app(scope, receive, send)
            return
        try:
            body = json.dumps(await form_to_json(Request(scope, receive), self.max_bytes)).encode()
        except Exception as error:  # a malformed or oversized form
            await error_response(400, "malformed_form", f"cannot read the multipart form: {error}")(scope, receive, send)
            return
        new_headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        new_headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app({**scope, "headers": new_headers}, replay, send)
