"""The tiny model's optional latent space: a small convolutional autoencoder, as SD3 has its VAE.

64 x 64 RGB in [-1, 1] <-> (64 / f) x (64 / f) x C latents, f = 2^stages. The latents are normalised like SD3's
(``(z - shift) * scale``, the two numbers measured on the training images once the autoencoder is trained and kept
in the model's config.json) so that the flow model sees unit-variance data. Deterministic: a plain autoencoder,
with Gaussian noise on the latents during its training so that the decoder also maps the flow model's slightly
off-manifold latents to clean images (no KL term; the procedural images are simple).

The decoder is what TCRM runs on every intermediate state (N x T images an iteration), so it is kept light:
about 50 M multiply-adds an image at width 64 (49.5 M at C = 4, 50.1 M at C = 8, by torch.utils.flop_counter's
FlopCounterMode on one decode), most of it at the two higher resolutions.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _block(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels_in, channels_out, 3, padding=1), nn.GroupNorm(8, channels_out), nn.SiLU())


class TinyAutoencoder(nn.Module):
    """Encoder: a stride-2 4 x 4 convolution per stage with a 3 x 3 block after each, then a 1 x 1 to ``channels``.
    Decoder: a 3 x 3 convolution and block at the latent resolution, then per stage a 2x nearest upsampling and a
    block (the last stage: two plain convolutions down to RGB)."""

    def __init__(self, channels: int, downsample: int = 4, width: int = 64) -> None:
        super().__init__()
        stages = round(math.log2(downsample))
        if downsample < 2 or 2**stages != downsample:
            raise ValueError(f"downsample must be a power of two >= 2, got {downsample}")
        if width % 32:
            raise ValueError(f"width must be a multiple of 32 (GroupNorm of 8 groups at width / 4), got {width}")
        self.channels, self.downsample = channels, downsample
        encoder: list[nn.Module] = [nn.Conv2d(3, width // 2, 4, 2, 1), nn.SiLU(), _block(width // 2, width)]
        for _ in range(stages - 1):
            encoder += [nn.Conv2d(width, width, 4, 2, 1), nn.SiLU(), _block(width, width)]
        encoder.append(nn.Conv2d(width, channels, 1))
        self.encoder = nn.Sequential(*encoder)
        decoder: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.SiLU(), _block(width, width)]
        last = width
        for stage in range(stages - 1):  # the block before the last upsampling halves the width
            last = width // 2 if stage == stages - 2 else width
            decoder += [nn.Upsample(scale_factor=2.0, mode="nearest"), _block(width, last)]
        decoder += [
            nn.Upsample(scale_factor=2.0, mode="nearest"),
            nn.Conv2d(last, width // 4, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width // 4, 3, 3, padding=1),
        ]
        self.decoder = nn.Sequential(*decoder)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [-1, 1] -> raw latents [N, C, H / f, W / f] (unnormalised)."""
        return self.encoder(images)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw latents -> [N, 3, H, W], about [-1, 1] (not clamped)."""
        return self.decoder(latents)
