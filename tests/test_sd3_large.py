"""SD3.5-Large is the SD3 adapter at the large config: its transformer has no dual-attention layers and RMS-normed
q / k (SD3.5-Medium has dual attention in its first 13 blocks). A tiny random pipeline of that shape (no download)
samples as the stock StableDiffusion3Pipeline, re-scores its first step with ratio 1 and shards every block."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusion3Pipeline

from fixtures_sd3 import TINY_RESOLUTION, TOKEN_LENGTH, build_tiny_sd3_pipeline
from model_checks import assert_first_ratio_is_one, assert_shard_units_cover_every_block
from vgpo.models.sd3 import load_sd3_policy
from vgpo.sampling import rollout

PROMPTS = ["a red cube", "a photo of a cat"]


@pytest.fixture(scope="module")
def tiny_large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD3 pipeline with its transformer rebuilt in SD3.5-Large's shape (qk RMS norm, no dual attention)."""
    from diffusers import SD3Transformer2DModel

    folder = tmp_path_factory.mktemp("tiny-sd3-large")
    pipeline = build_tiny_sd3_pipeline(None)
    config = {key: value for key, value in pipeline.transformer.config.items() if not key.startswith("_")}
    torch.manual_seed(1)
    pipeline.transformer = SD3Transformer2DModel(**{**config, "num_layers": 3, "qk_norm": "rms_norm"})
    pipeline.register_modules(transformer=pipeline.transformer)
    pipeline.save_pretrained(folder)
    return folder


def load_policy(folder: Path, **kwargs: object) -> object:
    return load_sd3_policy(
        folder, dtype="fp32", device="cpu", resolution=TINY_RESOLUTION, max_sequence_length=TOKEN_LENGTH,
        lora_rank=4, lora_alpha=8, gradient_checkpointing=False, **kwargs,
    )  # fmt: skip


def test_large_shape_samples_as_the_stock_pipeline(tiny_large: Path) -> None:
    policy = load_policy(tiny_large)
    transformer = policy.denoiser  # type: ignore[attr-defined]
    assert transformer.config.qk_norm == "rms_norm" and not transformer.config.dual_attention_layers
    noise = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(0))  # type: ignore[attr-defined]
    ours = rollout(policy, policy.encode_prompts(PROMPTS), 4, guidance_scale=4.5, initial_noise=noise, sde=False)  # type: ignore[attr-defined]
    stock = StableDiffusion3Pipeline.from_pretrained(tiny_large)
    stock.set_progress_bar_config(disable=True)
    expected = stock(
        PROMPTS, num_inference_steps=4, height=TINY_RESOLUTION, width=TINY_RESOLUTION, guidance_scale=4.5,
        max_sequence_length=TOKEN_LENGTH, latents=noise.clone(), output_type="latent",
    ).images  # fmt: skip
    torch.testing.assert_close(ours.final, expected, rtol=0, atol=1e-5)


def test_large_shape_first_ratio_and_shard_units(tiny_large: Path, tmp_path: Path) -> None:
    policy = load_policy(tiny_large)
    assert_first_ratio_is_one(policy, PROMPTS, guidance_scale=4.5, model_kind="sd3", run_dir=tmp_path)
    assert_shard_units_cover_every_block(policy, ("transformer_blocks",))
