"""Images in request bodies: base64 or a ``data:image/...;base64,`` URI -> validated bytes."""

from __future__ import annotations

import base64
import binascii
import re

from PIL import Image

from arr_coc.errors import ImageTooLargeError, InvalidImageError
from arr_coc.images import load_image
from arr_coc.settings import Settings

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[\w-]+=[\w.-]+)*;base64,", re.IGNORECASE)


def decode_image_field(text: str, settings: Settings) -> tuple[bytes, Image.Image]:
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
