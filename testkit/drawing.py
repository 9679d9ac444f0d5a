"""Images the tests draw themselves: gradients, shapes, text, noise, a natural-looking scene."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter


def gradient(width: int = 224, height: int = 168) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    array = np.stack([x / width, y / height, 1 - x / width], axis=-1) * 255
    return Image.fromarray(array.astype(np.uint8))


def shapes(width: int = 224, height: int = 224, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), (235, 235, 225))
    draw = ImageDraw.Draw(image)
    for colour in [(220, 30, 30), (30, 160, 40), (30, 60, 220), (240, 200, 20)]:
        size = int(rng.integers(max(2, min(width, height) // 8), max(3, min(width, height) // 4)))
        x, y = int(rng.integers(0, width - size)), int(rng.integers(0, height - size))
        if rng.random() < 0.5:
            draw.ellipse([x, y, x + size, y + size], fill=colour)
        else:
            draw.rectangle([x, y, x + size, y + size], fill=colour)
    return image


def text(width: int = 224, height: int = 112) -> Image.Image:
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for row in range(4):
        draw.text((8, 8 + 24 * row), "ARR-COC relevance 0123", fill=(0, 0, 0))
    return image


def noise(width: int = 224, height: int = 224, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def scene(width: int = 448, height: int = 336, seed: int = 0) -> Image.Image:
    """Sky gradient, textured ground, a few objects, a caption, blurred a little like a photo."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height)[:, None, None]
    sky = np.array([120, 170, 235]) * (1 - y) + np.array([230, 235, 245]) * y
    array = np.broadcast_to(sky, (height, width, 3)).copy()
    horizon = int(height * 0.6)
    ground = np.array([90, 130, 60]) + rng.normal(0, 18, (height - horizon, width, 3))
    array[horizon:] = ground
    image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse([width * 0.75, height * 0.08, width * 0.9, height * 0.28], fill=(250, 220, 90))
    draw.rectangle([width * 0.15, height * 0.4, width * 0.35, height * 0.7], fill=(170, 60, 50))
    draw.polygon(
        [(width * 0.12, height * 0.4), (width * 0.25, height * 0.25), (width * 0.38, height * 0.4)], fill=(90, 40, 30)
    )
    draw.ellipse([width * 0.55, height * 0.55, width * 0.65, height * 0.68], fill=(240, 240, 240))
    draw.text((width * 0.05, height * 0.9), "a red house and a white ball", fill=(255, 255, 255))
    return image.filter(ImageFilter.GaussianBlur(0.8))


def as_batch(*images: Image.Image) -> torch.Tensor:
    """Same-size PIL images -> ``[B, 3, H, W]`` in [0, 1]."""
    from arr_coc.images import to_tensor

    return torch.stack([to_tensor(image) for image in images])
