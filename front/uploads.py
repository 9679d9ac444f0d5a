"""Request bodies in: JSON or a multipart form, capped in size, into the route's request model.

``curl -F image=@photo.jpg -F question=...`` and a JSON body with the image in base64
(or a ``data:image/...;base64,`` URI) give the same model, the same validation and the
same error body. The body is read with a cap (413 past it, before anything is parsed);
the image is decoded and validated once, here, and nothing is ever fetched from a URL.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from typing import NamedTuple, TypeVar

from PIL import Image
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.requests import Request

from arr_coc.errors import ImageTooLargeError, InvalidImageError
from arr_coc.images import load_image
from front.errors import RequestError
from serving.settings import ServerSettings

Model = TypeVar("Model", bound=BaseModel)
TEXT_FIELDS = {"image", "question", "variant", "method", "stage"}
LIST_FIELDS = {"stop"}

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[\w-]+=[\w.-]+)*;base64,", re.IGNORECASE)


def decode_image_field(text: str, settings: ServerSettings) -> tuple[bytes, Image.Image]:
    """Decode and fully validate the ``image`` field; typed errors name the field and limit."""
    text = text.strip()
    match = _DATA_URI.match(text)
    if match:
        mime = (match.group("mime") or "").lower()
        if mime and not mime.startswith("image/"):
            raise InvalidImageError(f"data URI of type {mime} is not an image", field="image")
        text = text[match.end() :]
    elif text.startswith("data:"):
        raise InvalidImageError("only base64 data URIs are accepted (data:image/...;base64,...)", field="image")
    if len(text) * 3 // 4 > settings.max_image_bytes + 3:
        raise ImageTooLargeError(f"more than the limit of {settings.max_image_bytes} bytes", field="image")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidImageError(f"not valid base64 ({error})", field="image") from error
    image = load_image(data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
    return data, image


class BodyLimit(NamedTuple):
    """How a request body may arrive: at most ``max_bytes``, no gap between its parts over ``idle_timeout_s``."""

    max_bytes: int
    idle_timeout_s: float


def body_limit(settings: ServerSettings) -> BodyLimit:
    """The largest image in base64 plus room for the other fields; the client idle timeout of the settings."""
    max_bytes = (settings.max_image_bytes * 4) // 3 + 4 * settings.max_question_chars + 64 * 1024
    return BodyLimit(max_bytes, settings.client_idle_timeout_s)


def _too_large(size: str, max_bytes: int) -> RequestError:
    return RequestError(
        "request_too_large",
        f"the body{size} is over the limit of {max_bytes} bytes: the largest "
        "accepted image, base64-encoded, plus the other fields",
    )


async def read_limited(request: Request, limit: BodyLimit) -> bytes:
    """The whole body, refused with 413 once it passes ``limit.max_bytes`` (by its header, or as it streams in),
    and with 408 when the client sends nothing for ``limit.idle_timeout_s`` (it holds an admission slot)."""
    max_bytes = limit.max_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(f" of {declared} bytes", max_bytes)
    chunks, size, parts = [], 0, request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(anext(parts), limit.idle_timeout_s)
        except StopAsyncIteration:
            return b"".join(chunks)
        except TimeoutError:
            raise RequestError(
                "request_timeout", f"no part of the body arrived for {limit.idle_timeout_s:g} s; send it faster"
            ) from None
        size += len(chunk)
        if size > max_bytes:
            raise _too_large("", max_bytes)
        chunks.append(chunk)


def _form_value(name: str, raw: str):
    """A form field as its JSON value: numbers and booleans parsed, text fields kept as text."""
    if name in TEXT_FIELDS:
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


async def _form_fields(request: Request, body: bytes) -> dict:
    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_part_size=len(body) + 1)
    except Exception as error:  # python-multipart's own errors: a form that does not parse
        raise RequestError("malformed_form", f"cannot read the multipart form: {error}") from error
    fields: dict = {}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            value = base64.b64encode(await value.read()).decode()
        else:
            value = _form_value(name, value)
        if name in LIST_FIELDS:
            fields.setdefault(name, []).append(value)
        else:
            fields[name] = value
    return fields


async def read_request(request: Request, model: type[Model], limit: BodyLimit, forms: bool = True) -> Model:
    """The body of ``request`` (JSON, or ``multipart/form-data`` when ``forms``) validated as ``model``.

    Raises :class:`RequestError` (413 too large, 408 too slow, 415 another media type,
    400 a broken form) or pydantic's ``ValidationError`` (400 malformed JSON, 422 a bad field).
    """
    media_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    accepted = ("application/json", "multipart/form-data") if forms else ("application/json",)
    if media_type not in accepted:
        raise RequestError("unsupported_media_type", f"send {' or '.join(accepted)}, not {media_type}")
    body = await read_limited(request, limit)
    if media_type == "multipart/form-data":
        return model.model_validate(await _form_fields(request, body))
    return model.model_validate_json(body)


def request_body_openapi(model: type[BaseModel], forms: bool = True) -> dict:
    """``openapi_extra`` documenting a body of ``model`` as JSON (and as a form with the image as a file)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    if not forms:
        return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
    form = {
        **schema,
        "properties": {
            **schema["properties"],
            "image": {"type": "string", "format": "binary", "description": "the image file"},
        },
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": schema},
                "multipart/form-data": {"schema": form},
            },
        }
    }


def url_hosts(settings: ServerSettings) -> frozenset[str]:
    """The hosts whose image URLs may be fetched (``ARR_COC_IMAGE_URL_HOSTS``)."""
    return frozenset(host.strip().lower() for host in settings.image_url_hosts.split(",") if host.strip())


def is_remote(image: str) -> bool:
    return image.startswith(("http://", "https://"))


async def fetch_image(url: str, settings: ServerSettings, timeout_s: float = 10.0) -> str:
    """The image at ``url`` (an allowed host's http(s) URL) as base64; typed errors when it cannot be had.

    Redirects are not followed (they could lead to any host), the body is capped at
    ``max_image_bytes`` while it streams in, and only ``image/*`` answers are taken.
    """
    import httpx

    try:
        async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client:
            async with client.stream("GET", url) as response:
                kind = response.headers.get("content-type", "")
                if response.status_code != 200 or not kind.startswith("image/"):
                    raise InvalidImageError(
                        f"fetching the image URL gave {response.status_code} {kind or 'no type'}", field="messages"
                    )
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > settings.max_image_bytes:
                        raise ImageTooLargeError(
                            f"the image URL sent more than {settings.max_image_bytes} bytes", field="messages"
                        )
    except httpx.HTTPError as error:
        raise InvalidImageError(f"cannot fetch the image URL ({type(error).__name__})", field="messages") from error
    return base64.b64encode(bytes(data)).decode()
