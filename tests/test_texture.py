"""texture_array: shape, documented ranges, per-image independence, distinct channels, bad grids."""

import itertools

import pytest
import torch

from arr_coc.errors import InvalidGridError, InvalidImageError
from arr_coc.texture import CHANNELS, NUM_CHANNELS, texture_array
from testkit.drawing import as_batch, gradient, noise, scene, shapes, text

RANGES = {
    "red": (0, 1),
    "green": (0, 1),
    "blue": (0, 1),
    "lightness": (0, 1),
    "green_red": (-1, 1),
    "sobel_x": (-1, 1),
    "sobel_y": (-1, 1),
    "edge_magnitude": (0, 1),
    "position_y": (0, 1),
    "position_x": (0, 1),
    "eccentricity": (0, 1),
    "blue_yellow": (-1, 1),
    "local_contrast": (0, 0.5),
}


@pytest.mark.parametrize("draw", [gradient, shapes, text, noise, scene])
@pytest.mark.parametrize("grid", [(4, 6), (8, 8), (3, 11)])
def test_shapes_and_ranges(draw, grid):
    image = draw()
    texture = texture_array(as_batch(image, image), grid)
    assert texture.shape == (2, NUM_CHANNELS, *grid)
    assert torch.isfinite(texture).all()
    for index, name in enumerate(CHANNELS):
        low, high = RANGES[name]
        assert texture[:, index].min() >= low - 1e-5, name
        assert texture[:, index].max() <= high + 1e-5, name


def test_colour_channels_follow_the_image():
    red = torch.zeros(1, 3, 56, 56)
    red[:, 0] = 1.0
    texture = texture_array(red, (2, 2))
    assert torch.allclose(texture[0, 0], torch.ones(2, 2))
    assert texture[0, 4].min() > 0.5  # a* strongly positive for red
    assert torch.allclose(texture[0, 7], torch.zeros(2, 2), atol=1e-6)  # flat: no edges


def test_vertical_edge_shows_in_sobel_x_not_y():
    image = torch.zeros(1, 3, 64, 64)
    image[..., 32:] = 1.0
    texture = texture_array(image, (4, 4))
    assert texture[0, 5].abs().max() > 0.1
    assert texture[0, 6].abs().max() < 1e-6
    assert texture[0, 7, :, 1:3].min() > texture[0, 7, :, 0].max()


def test_positions_and_eccentricity():
    texture = texture_array(torch.rand(1, 3, 90, 90), (3, 3))
    assert torch.allclose(texture[0, 8, :, 0], torch.tensor([1 / 6, 0.5, 5 / 6]))
    assert torch.allclose(texture[0, 9, 0], torch.tensor([1 / 6, 0.5, 5 / 6]))
    assert texture[0, 10, 1, 1] == 0 and texture[0, 10, 0, 0] == texture[0, 10].max()


def test_per_image_independence_is_exact():
    a, b = as_batch(scene(224, 168)), as_batch(noise(224, 168))
    alone = texture_array(a, (6, 8))
    together = texture_array(torch.cat([a, b, a.flip(-1)]), (6, 8))
    assert torch.equal(alone[0], together[0])


def test_no_two_channels_equal_on_a_natural_image():
    texture = texture_array(as_batch(scene()), (12, 16))[0].flatten(1)
    for i, j in itertools.combinations(range(NUM_CHANNELS), 2):
        assert not torch.allclose(texture[i], texture[j], atol=1e-3), (CHANNELS[i], CHANNELS[j])
        corr = torch.corrcoef(texture[[i, j]])[0, 1]
        assert not corr.abs() > 0.999, (CHANNELS[i], CHANNELS[j], float(corr))


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_constant_image_is_finite(value):
    texture = texture_array(torch.full((1, 3, 64, 64), value), (4, 4))
    assert torch.isfinite(texture).all()


@pytest.mark.parametrize("grid", [(0, 4), (4, 0), (-1, 2), (65, 4), (4, 65), "ab", (1, 2, 3)])
def test_bad_grid(grid):
    with pytest.raises(InvalidGridError) as info:
        texture_array(torch.rand(1, 3, 64, 64), grid)
    assert info.value.field == "grid"


def test_grid_as_fine_as_the_pixels_works():
    assert texture_array(torch.rand(1, 3, 8, 5), (8, 5)).shape == (1, 13, 8, 5)


@pytest.mark.parametrize(
    "images",
    [
        torch.rand(3, 64, 64),
        torch.rand(1, 4, 64, 64),
        torch.randint(0, 255, (1, 3, 8, 8)),
        torch.full((1, 3, 8, 8), float("nan")),
    ],
    ids=["no-batch", "four-channels", "integers", "nan"],
)
def test_bad_images(images):
    with pytest.raises(InvalidImageError):
        texture_array(images, (2, 2))
