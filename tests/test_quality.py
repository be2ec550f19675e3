"""The quality suite ranks clean images above blurred, noisy and blocky ones; diversity by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vgpo.embedded.compositional import CompositionalWorld
from vgpo.embedded.text import TextWorld
from vgpo.errors import ConfigError
from vgpo.scoring.image_statistics import (
    METRICS,
    background_colour,
    background_lightness,
    background_saturation,
    blockiness,
    clipped_fraction,
    colourfulness,
    contrast,
    diversity,
    noise_level,
    quality_metrics,
    sharpness,
)
from vgpo.scoring.images import uint8_to_images


@pytest.fixture(scope="module")
def clean() -> torch.Tensor:
    rng = np.random.default_rng(0)
    images = []
    for task in (CompositionalWorld(), TextWorld()):
        images += [task.render(item, rng) for item in task.sample_items(rng, 8)]
    return uint8_to_images(images)  # [16, 3, 64, 64]


def blurred(images: torch.Tensor) -> torch.Tensor:
    kernel = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    kernel = (kernel[:, None] * kernel[None]) / 256  # binomial approximation of a Gaussian, sigma ~ 1
    return F.conv2d(F.pad(images, (2, 2, 2, 2), mode="replicate"), kernel.expand(3, 1, 5, 5).contiguous(), groups=3)


def noisy(images: torch.Tensor) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    return (images + 0.08 * noise).clamp(0, 1)


def blocky(images: torch.Tensor) -> torch.Tensor:
    return F.interpolate(F.avg_pool2d(images, 8), scale_factor=8, mode="nearest")


def test_quality_metrics_names_and_values(clean) -> None:
    metrics = quality_metrics(clean)
    assert set(metrics) == set(METRICS)
    assert all(math.isfinite(value) for value in metrics.values())


def test_sharpness_and_contrast_rank_clean_above_blurred(clean) -> None:
    assert (sharpness(clean) > sharpness(blurred(clean))).all()
    assert contrast(clean).mean() > contrast(blurred(clean)).mean()


def test_noise_level_ranks_clean_above_noisy(clean) -> None:
    assert (noise_level(clean) < noise_level(noisy(clean))).all()
    # Immerkaer's estimate recovers the std of added noise on a flat image: 0.05 -> ~0.05.
    flat = torch.full((1, 3, 64, 64), 0.5) + 0.05 * torch.randn(
        1, 1, 64, 64, generator=torch.Generator().manual_seed(1)
    )
    assert float(noise_level(flat)) == pytest.approx(0.05, rel=0.1)
    assert (clipped_fraction(clean) <= clipped_fraction(noisy(clean))).all()


def test_blockiness_ranks_clean_above_blocky(clean) -> None:
    assert (blockiness(clean) < 0.3).all()
    assert (blockiness(blocky(clean)) > 0.9).all()


def test_colourfulness_by_hand() -> None:
    grey = torch.full((1, 3, 8, 8), 0.5)
    assert float(colourfulness(grey)) == pytest.approx(0.0, abs=1e-4)
    red = torch.zeros(1, 3, 8, 8)
    red[:, 0] = 1.0
    # rg = 255, yb = 127.5 everywhere: no spread, M = 0.3 * sqrt(255^2 + 127.5^2) = 85.53
    assert float(colourfulness(red)) == pytest.approx(0.3 * math.hypot(255, 127.5), rel=1e-4)


def test_background_colour_by_hand() -> None:
    # a lavender border band (the outer 64 / 8 = 8 px) around a saturated red square: the background is lavender
    lavender = torch.tensor([230.0, 230.0, 250.0]) / 255
    images = lavender.view(1, 3, 1, 1).repeat(2, 1, 64, 64)
    images[:, :, 8:56, 8:56] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    images[1] = 1.0  # a white image
    torch.testing.assert_close(background_colour(images), torch.stack([lavender, torch.ones(3)]))
    # HSV saturation (250 - 230) / 250 = 0.08; white has none; lightness is the largest channel
    torch.testing.assert_close(background_saturation(images), torch.tensor([0.08, 0.0]))
    torch.testing.assert_close(background_lightness(images), torch.tensor([250 / 255, 1.0]))


def test_the_background_is_the_median_of_the_border_not_its_mean() -> None:
    # a few object pixels that touch the border do not move it: 8 of the 8x8 image's 28 border pixels are black
    images = torch.ones(1, 3, 8, 8)
    images[:, :, 0, :] = 0.0
    torch.testing.assert_close(background_colour(images), torch.ones(1, 3))
    assert float(background_saturation(images)) == 0.0


def test_diversity_by_hand() -> None:
    black, white = torch.zeros(1, 3, 32, 32), torch.ones(1, 3, 32, 32)
    assert diversity([torch.cat([black, black, black])]) == 0.0
    # Pairs of a group [black, white]: one pair at RMS distance 1.
    assert diversity([torch.cat([black, white])]) == pytest.approx(1.0)
    # Groups [b, b] and [b, w] average to 0.5; groups of 1 are skipped.
    assert diversity([torch.cat([black, black]), torch.cat([black, white]), black]) == pytest.approx(0.5)
    # One tensor [B, G, 3, H, W] works too.
    assert diversity(torch.stack([torch.cat([black, white])])) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="at least one prompt with 2 or more samples"):
        diversity([black])


def test_bad_shape_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"images \[N, 3, H, W\]"):
        quality_metrics(torch.zeros(2, 64, 64))
