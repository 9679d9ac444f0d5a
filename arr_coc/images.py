"""Decoding any image a user may send into an RGB picture, with size limits first.

``load_image`` reads the header, checks the byte and pixel limits, and only then
decodes, so a decompression bomb or a 100k x 100k PNG costs nothing. Every Pillow
mode becomes 8-bit RGB: alpha is composited over white, 16/32-bit and float greys
are rescaled rather than clipped, CMYK and palette images are converted, and the
EXIF orientation is applied.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from arr_coc.errors import ImageTooLargeError, InvalidImageError

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024

ImageSource = bytes | bytearray | str | Path | Image.Image


def _open(source: ImageSource, max_bytes: int) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise InvalidImageError(f"no image file at {path}", field="image")
        if path.stat().st_size > max_bytes:
            raise ImageTooLargeError(f"{path.stat().st_size} bytes exceeds the limit of {max_bytes}", field="image")
        source = path.read_bytes()
    if not isinstance(source, (bytes, bytearray)):
        raise InvalidImageError(f"expected bytes, a path or a PIL image, got {type(source).__name__}", field="image")
    if len(source) == 0:
        raise InvalidImageError("empty image data", field="image")
    if len(source) > max_bytes:
        raise ImageTooLargeError(f"{len(source)} bytes exceeds the limit of {max_bytes}", field="image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(source))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageTooLargeError(f"decompression bomb ({error})", field="image") from error
    except UnidentifiedImageError as error:
        raise InvalidImageError(f"not a decodable image ({error})", field="image") from error
    except (OSError, ValueError, SyntaxError) as error:
        raise InvalidImageError(f"corrupt image header ({error})", field="image") from error


def _check_size(image: Image.Image, max_pixels: int) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImageError(f"image has no pixels ({width}x{height})", field="image")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}", field="image"
        )


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """16/32-bit integer or float greys -> 8-bit L, rescaled by the mode's range."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        top = 1.0 if values.size and np.nanmax(values) <= 1.0 else 255.0
    elif image.mode.startswith("I;16"):
        top = 65535.0
    else:
        top = 65535.0 if values.size and values.max() > 255 else 255.0
    scaled = np.clip(np.nan_to_num(values / top), 0.0, 1.0) * 255.0
    return Image.fromarray(np.round(scaled).astype(np.uint8))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB (alpha composited over white)."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _high_depth_to_l(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        try:
            image = image.convert("RGB")
        except (ValueError, OSError) as error:
            raise InvalidImageError(f"cannot convert mode {image.mode} to RGB ({error})", field="image") from error
    return image


def load_image(
    source: ImageSource,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode ``source`` (bytes, a path or a PIL image) into an RGB image.

    Limits are checked on the header before any pixel is decoded: more than
    ``max_bytes`` bytes or ``max_pixels`` pixels raises :class:`ImageTooLargeError`;
    anything that does not decode (corrupt, truncated, 0x0) raises
    :class:`InvalidImageError`.
    """
    image = _open(source, max_bytes)
    _check_size(image, max_pixels)
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise InvalidImageError(f"image data is corrupt or truncated ({error})", field="image") from error
    return to_rgb(image)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> ``[3, H, W]`` float32 in [0, 1]."""
    array = np.asarray(to_rgb(image), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)
