"""Image-quality suite, independent of the task rewards: it exposes reward hacking (blur, noise, grids, washed-out
or over-saturated colour, collapsed diversity) the way the paper's quality columns do.

All metrics are no-reference and cheap, computed on images [N, 3, H, W] float in [0, 1] at any size (they are
meant for 64 px, where BRISQUE, PIQE and NIQE have too few patches to be trusted: NIQE needs 192 px or more).
Each metric's docstring says which direction is better. :func:`quality_metrics` averages them over a batch;
:func:`diversity` measures how different a prompt's samples are from each other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from vgpo.errors import ConfigError

# ITU-R BT.601 luma weights.
LUMA = torch.tensor([0.299, 0.587, 0.114])
LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
# Immerkaer's noise kernel: the difference of two Laplacians, which cancels on smooth image structure.
NOISE_KERNEL = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


def _check(images: torch.Tensor) -> torch.Tensor:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"quality metrics expect images [N, 3, H, W], got shape {tuple(images.shape)}")
    if images.shape[-1] < 8 or images.shape[-2] < 8:
        raise ConfigError(f"quality metrics need images of at least 8x8 px, got {tuple(images.shape[-2:])}")
    return images.detach().to("cpu", torch.float32).clamp(0, 1)


def _gray(images: torch.Tensor) -> torch.Tensor:
    """Luma [N, 1, H, W] of images [N, 3, H, W]."""
    return (images * LUMA.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)


def sharpness(images: torch.Tensor) -> torch.Tensor:
    """Variance of the Laplacian of the luma (Pech-Pacheco et al. 2000), per image [N]. Higher is sharper.

    Blur drives it down; note that noise drives it up, so read it together with :func:`noise_level`.
    """
    response = F.conv2d(_gray(_check(images)), LAPLACIAN.view(1, 1, 3, 3))  # [N, 1, H-2, W-2]
    return response.flatten(1).var(dim=1)


def noise_level(images: torch.Tensor) -> torch.Tensor:
    """Estimated std of additive Gaussian noise in the luma (Immerkaer 1996), per image [N]. Lower is better.

    sigma = sqrt(pi / 2) / (6 (W - 2) (H - 2)) * sum |I * N|, with N the 3x3 kernel of :data:`NOISE_KERNEL`.
    Clean flat-shaded images score near 0; edges contribute a little.
    """
    gray = _gray(_check(images))
    response = F.conv2d(gray, NOISE_KERNEL.view(1, 1, 3, 3)).abs()  # [N, 1, H-2, W-2]
    height, width = gray.shape[-2:]
    return response.flatten(1).sum(dim=1) * math.sqrt(math.pi / 2) / (6 * (width - 2) * (height - 2))


def blockiness(images: torch.Tensor, period: int = 8) -> torch.Tensor:
    """Grid-artefact contrast per image [N], in [0, 1]: (b - i) / (b + i), clipped at 0, where b is the mean
    |luma step| across the lines of a ``period``-px grid and i the mean step elsewhere. Near 0 for clean
    images (edges fall anywhere), near 1 for blocky or grid-patterned ones (JPEG-like blocks, patch-grid
    hacks). Lower is better.
    """
    gray = _gray(_check(images))[:, 0]  # [N, H, W]
    steps_x = (gray[:, :, 1:] - gray[:, :, :-1]).abs()  # [N, H, W-1]: step between column j and j+1
    steps_y = (gray[:, 1:, :] - gray[:, :-1, :]).abs()  # [N, H-1, W]
    on_x = (torch.arange(steps_x.shape[-1]) % period) == period - 1
    on_y = (torch.arange(steps_y.shape[-2]) % period) == period - 1
    boundary = steps_x[:, :, on_x].mean(dim=(1, 2)) + steps_y[:, on_y, :].mean(dim=(1, 2))
    inside = steps_x[:, :, ~on_x].mean(dim=(1, 2)) + steps_y[:, ~on_y, :].mean(dim=(1, 2))
    return ((boundary - inside) / (boundary + inside).clamp_min(1e-6)).clamp_min(0.0)


def high_frequency_ratio(images: torch.Tensor) -> torch.Tensor:
    """Fraction of the luma's spectral energy (mean removed) above half the Nyquist frequency, per image [N].

    A diagnostic with no single good direction: noise and grid artefacts raise it, blur lowers it; compare
    it with the value on the training data.
    """
    gray = _gray(_check(images))[:, 0]
    gray = gray - gray.mean(dim=(1, 2), keepdim=True)
    power = torch.fft.fft2(gray).abs().square()  # [N, H, W]
    fy = torch.fft.fftfreq(gray.shape[-2]).abs().view(-1, 1)
    fx = torch.fft.fftfreq(gray.shape[-1]).abs().view(1, -1)
    high = torch.maximum(fy, fx) > 0.25  # half of the Nyquist frequency (0.5 cycles / px)
    total = power.flatten(1).sum(dim=1).clamp_min(1e-12)
    return power[:, high].sum(dim=1) / total


def colourfulness(images: torch.Tensor) -> torch.Tensor:
    """Hasler & Suesstrunk (2003) colourfulness per image [N], on the 0-255 scale.

    M = sqrt(std(rg)^2 + std(yb)^2) + 0.3 sqrt(mean(rg)^2 + mean(yb)^2), rg = R - G, yb = (R + G) / 2 - B.
    0 for grey images, ~15 "slightly", ~60 "quite", >100 "extremely" colourful. Higher is more colourful;
    a jump above the training data's value flags over-saturation hacking, a drop washed-out images.
    """
    rgb = _check(images) * 255.0
    rg = rgb[:, 0] - rgb[:, 1]
    yb = 0.5 * (rgb[:, 0] + rgb[:, 1]) - rgb[:, 2]
    std = torch.sqrt(rg.flatten(1).var(dim=1, unbiased=False) + yb.flatten(1).var(dim=1, unbiased=False))
    mean = torch.sqrt(rg.flatten(1).mean(dim=1).square() + yb.flatten(1).mean(dim=1).square())
    return std + 0.3 * mean


def saturation(images: torch.Tensor) -> torch.Tensor:
    """Mean HSV saturation (max - min) / max per image [N], in [0, 1]. A diagnostic like colourfulness."""
    rgb = _check(images)
    high = rgb.max(dim=1).values
    low = rgb.min(dim=1).values
    return ((high - low) / high.clamp_min(1e-6)).flatten(1).mean(dim=1)


def clipped_fraction(images: torch.Tensor) -> torch.Tensor:
    """Fraction of channel values at the ends of the range (< 0.5/255 or > 254.5/255), per image [N].

    Lower is better: a rise over the training data's value flags blown-out or crushed colours.
    """
    rgb = _check(images)
    clipped = (rgb < 0.5 / 255) | (rgb > 254.5 / 255)
    return clipped.flatten(1).float().mean(dim=1)


def background_colour(images: torch.Tensor) -> torch.Tensor:
    """The background's colour per image [N, 3]: the channel-wise median of the border band (the outer eighth of
    each side, at least one pixel), where the embedded scenes and text images keep their plain background."""
    rgb = _check(images)
    height, width = rgb.shape[-2:]
    band = max(1, min(height, width) // 8)
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[:band] = mask[-band:] = True
    mask[:, :band] = mask[:, -band:] = True
    return rgb[:, :, mask].median(dim=2).values


def background_saturation(images: torch.Tensor) -> torch.Tensor:
    """HSV saturation of :func:`background_colour` per image [N], in [0, 1]: 0 for a white or grey background,
    rising as it drifts to a colour (the base model's light backgrounds turning lavender). A diagnostic."""
    colour = background_colour(images)
    high = colour.max(dim=1).values
    return (high - colour.min(dim=1).values) / high.clamp_min(1e-6)


def background_lightness(images: torch.Tensor) -> torch.Tensor:
    """HSV value (the largest channel) of :func:`background_colour` per image [N], in [0, 1]. A diagnostic."""
    return background_colour(images).max(dim=1).values


def contrast(images: torch.Tensor) -> torch.Tensor:
    """RMS contrast: std of the luma per image [N], in [0, 0.5]. Higher is more contrast (blur lowers it)."""
    return _gray(_check(images)).flatten(1).std(dim=1, unbiased=False)


METRICS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sharpness": sharpness,
    "noise": noise_level,
    "blockiness": blockiness,
    "high_frequency": high_frequency_ratio,
    "colourfulness": colourfulness,
    "saturation": saturation,
    "clipped": clipped_fraction,
    "contrast": contrast,
    "background_saturation": background_saturation,
    "background_lightness": background_lightness,
}
"""Name -> per-image metric [N]. Better is higher for sharpness and contrast; lower for noise, blockiness and
clipped; colourfulness, saturation, high_frequency and the background's saturation and lightness are diagnostics to
compare with the training data."""


def quality_per_image(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every metric of :data:`METRICS` per image: name -> [N] float32."""
    return {name: metric(images) for name, metric in METRICS.items()}


def quality_metrics(images: torch.Tensor) -> dict[str, float]:
    """Batch means of every metric of :data:`METRICS` (see each function for its direction)."""
    return {name: float(values.mean()) for name, values in quality_per_image(images).items()}


def diversity(images_per_prompt: Sequence[torch.Tensor] | torch.Tensor, size: int = 16) -> float:
    """Mean pairwise distance between samples of the same prompt, averaged over prompts. Higher is more diverse.

    ``images_per_prompt``: a sequence of [G, 3, H, W] groups (G >= 2), or one tensor [B, G, 3, H, W].
    Images are area-downsampled to ``size`` px (so pixel-level noise does not count as diversity) and the
    distance is the RMS difference in [0, 1]: 0 when all samples of a prompt are identical.
    """
    groups = list(images_per_prompt)  # a [B, G, 3, H, W] tensor iterates over its B groups
    per_prompt = []
    for group in groups:
        if group.ndim != 4 or group.shape[1] != 3:
            raise ConfigError(
                f"diversity expects groups of images [G, 3, H, W], got a group of shape {tuple(group.shape)}"
            )
        if group.shape[0] < 2:
            continue
        small = F.adaptive_avg_pool2d(_check(group), size).flatten(1)  # [G, 3 * size * size]
        distances = torch.cdist(small, small) / math.sqrt(small.shape[1])  # [G, G] RMS differences
        count = group.shape[0]
        per_prompt.append(float(distances.sum() / (count * (count - 1))))
    if not per_prompt:
        raise ConfigError("diversity needs at least one prompt with 2 or more samples; sample G >= 2 per prompt")
    return float(sum(per_prompt) / len(per_prompt))
