"""load_image: every Pillow mode becomes RGB; bad bytes and oversize images get typed errors."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from arr_coc.errors import ImageTooLargeError, InvalidImageError
from arr_coc.images import load_image, to_tensor
from testkit.drawing import shapes


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` but holds one tiny compressed row."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1", "YCbCr"])
def test_every_mode_becomes_rgb(mode):
    source = shapes(64, 48)
    if mode == "I;16":
        array = np.asarray(source.convert("L"), dtype=np.uint16) * 257
        image = Image.fromarray(array)
    else:
        image = source.convert(mode)
    loaded = load_image(image)
    assert loaded.mode == "RGB"
    assert loaded.size == (64, 48)
    pixels = np.asarray(loaded)
    assert pixels.std() > 10, "content survived the conversion"


def test_sixteen_bit_grey_is_rescaled_not_clipped():
    array = np.full((8, 8), 32768, dtype=np.uint16)  # mid-grey at 16 bits
    loaded = load_image(Image.fromarray(array))
    assert abs(int(np.asarray(loaded)[0, 0, 0]) - 128) <= 1


def test_alpha_is_composited_over_white():
    transparent = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert np.asarray(load_image(transparent))[0, 0].tolist() == [255, 255, 255]
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    assert 120 <= np.asarray(load_image(half))[0, 0, 0] <= 135


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_encoded_bytes_decode(fmt):
    loaded = load_image(encode(shapes(40, 30), fmt))
    assert loaded.mode == "RGB" and loaded.size == (40, 30)


def test_tensor_is_chw_unit_range():
    tensor = to_tensor(shapes(40, 30))
    assert tensor.shape == (3, 30, 40)
    assert 0.0 <= tensor.min() and tensor.max() <= 1.0


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 10],
    ids=["empty", "text", "png-magic-only"],
)
def test_undecodable_bytes(data):
    with pytest.raises(InvalidImageError) as info:
        load_image(data)
    assert info.value.field == "image"


def test_truncated_png():
    data = encode(shapes(200, 200))
    with pytest.raises(InvalidImageError):
        load_image(data[: len(data) // 2])


def test_pixel_limit_checked_before_decoding():
    bomb = png_header_only(30000, 30000)  # 900 Mpx claimed in a few dozen bytes
    with pytest.raises(ImageTooLargeError) as info:
        load_image(bomb, max_pixels=50_000_000)
    assert "pixels" in info.value.detail or "bomb" in info.value.detail


def test_byte_limit():
    with pytest.raises(ImageTooLargeError):
        load_image(encode(shapes(64, 64)), max_bytes=100)


def test_zero_size_image():
    with pytest.raises(InvalidImageError):
        load_image(png_header_only(0, 10))


def test_missing_file(tmp_path):
    with pytest.raises(InvalidImageError):
        load_image(tmp_path / "nope.png")


def test_wrong_type():
    with pytest.raises(InvalidImageError):
        load_image(12345)
