"""The Qwen-Image adapter on a tiny random-weight pipeline built in a fixture (a Qwen2.5-VL text encoder from a
transformers config, no download, ever): the stock QwenImagePipeline's samples with true CFG and its norm rescale,
the first PPO ratio, `vgpo train` with both methods, LoRA export into the stock pipeline and FSDP shard units."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from diffusers import QwenImagePipeline

from fixtures_qwen_image import QWEN_RESOLUTION, QWEN_TOKENS, build_tiny_qwen_image_pipeline
from model_checks import (
    assert_first_ratio_is_one,
    assert_resume_is_bitwise,
    assert_shard_units_cover_every_block,
    assert_train_through_cli,
    perturb_lora,
)
from vgpo.errors import CheckpointError
from vgpo.models.base import Training, export_lora
from vgpo.models.flux import pack_latents, unpack_latents
from vgpo.models.qwen_image import QwenImagePolicy, load_qwen_image_policy
from vgpo.policy import FlowPolicy
from vgpo.sampling import rollout

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PROMPTS = ["a red cube", "a photo of a cat"]
GUIDANCE = 4.0
MODEL = [
    f"model.options.resolution={QWEN_RESOLUTION}",
    f"model.options.max_sequence_length={QWEN_TOKENS}",
    f"sampling.guidance_scale={GUIDANCE}",
]


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-qwen-image")
    build_tiny_qwen_image_pipeline(folder)
    return folder


def load_policy(folder: Path, lora_rank: int | None = 4) -> QwenImagePolicy:
    return load_qwen_image_policy(
        folder, dtype="fp32", device="cpu", training=Training(lora_rank=lora_rank, lora_alpha=8),
        resolution=QWEN_RESOLUTION, max_sequence_length=QWEN_TOKENS,
    )  # fmt: skip


@pytest.fixture
def policy(tiny_qwen: Path) -> QwenImagePolicy:
    torch.manual_seed(0)
    return load_policy(tiny_qwen)


def stock_sample(folder: Path, noise: torch.Tensor, output_type: str, lora: Path | None = None) -> torch.Tensor:
    pipeline = QwenImagePipeline.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    if lora is not None:
        pipeline.load_lora_weights(lora)
    images = pipeline(
        prompt=PROMPTS,
        negative_prompt=[" "] * len(PROMPTS),
        true_cfg_scale=GUIDANCE,
        height=QWEN_RESOLUTION,
        width=QWEN_RESOLUTION,
        num_inference_steps=4,
        latents=pack_latents(noise),
        max_sequence_length=QWEN_TOKENS,
        output_type=output_type,
    ).images
    return unpack_latents(images, *noise.shape[-2:]) if output_type == "latent" else images


def test_loads_with_a_frozen_text_encoder_and_padded_prompts(policy: QwenImagePolicy, tiny_qwen: Path) -> None:
    assert isinstance(policy, FlowPolicy)
    assert policy.latent_shape == (4, 8, 8)
    assert policy.fingerprint().startswith(f"qwen_image:{tiny_qwen.name}:")
    assert not any(parameter.requires_grad for parameter in policy.adapter.pipeline.text_encoder.parameters())
    cond = policy.encode_prompts(PROMPTS)
    assert cond["prompt_embeds"].shape[:2] == (2, QWEN_TOKENS) and cond["negative_prompt_mask"].shape == (
        2,
        QWEN_TOKENS,
    )
    # the pipeline's own embeddings are the unpadded rows
    embeds, _ = policy.adapter.pipeline.encode_prompt(PROMPTS, max_sequence_length=QWEN_TOKENS)
    length = embeds.shape[1]
    torch.testing.assert_close(cond["prompt_embeds"][:, :length], embeds, rtol=0, atol=0)
    assert cond["prompt_embeds"][:, length:].abs().sum() == 0 and cond["prompt_mask"][:, length:].sum() == 0
    sigmas = policy.sigma_schedule(4)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert abs(float(sigmas[-2]) - 0.02) < 1e-6  # Qwen-Image's terminal stretch: the last non-zero sigma is 0.02


def test_missing_folder_is_a_named_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="Qwen/Qwen-Image"):
        load_qwen_image_policy(tmp_path / "no-qwen", device="cpu")


def test_true_cfg_rescales_each_token_to_the_conditional_norm(policy: QwenImagePolicy) -> None:
    v_uncond = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    v_cond = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    combined = policy.adapter.combine_guidance(v_uncond, v_cond, 4.0)
    packed = pack_latents(combined)
    torch.testing.assert_close(packed.norm(dim=-1), pack_latents(v_cond).norm(dim=-1))
    direction = pack_latents(v_uncond + 4.0 * (v_cond - v_uncond))
    cosine = torch.nn.functional.cosine_similarity(packed, direction, dim=-1)
    torch.testing.assert_close(cosine, torch.ones_like(cosine))


def test_ode_rollout_equals_the_stock_pipeline(policy: QwenImagePolicy, tiny_qwen: Path) -> None:
    """Same noise, 4 steps, true CFG 4: final latents and images within 1e-5 of the pipeline's (our prompts are
    padded to a fixed length with a mask, and the CFG pair is one batched call; seen: 9.5e-7 and 4.8e-7)."""
    noise = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(0))
    ours = rollout(policy, policy.encode_prompts(PROMPTS), 4, guidance_scale=GUIDANCE, initial_noise=noise, sde=False)
    torch.testing.assert_close(ours.final, stock_sample(tiny_qwen, noise, "latent"), rtol=0, atol=1e-5)
    torch.testing.assert_close(policy.decode(ours.final), stock_sample(tiny_qwen, noise, "pt"), rtol=0, atol=1e-5)


def test_first_ppo_ratio_is_exactly_one(policy: QwenImagePolicy, tmp_path: Path) -> None:
    assert_first_ratio_is_one(policy, PROMPTS, guidance_scale=GUIDANCE, model_kind="qwen_image", run_dir=tmp_path)


def test_exported_lora_in_the_stock_pipeline_gives_our_images(
    policy: QwenImagePolicy, tiny_qwen: Path, tmp_path: Path
) -> None:
    perturb_lora(policy.denoiser)
    out = export_lora(policy, tmp_path / "lora")
    noise = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(2))
    base = stock_sample(tiny_qwen, noise, "latent")
    with_lora = stock_sample(tiny_qwen, noise, "latent", lora=out)
    ours = rollout(policy, policy.encode_prompts(PROMPTS), 4, guidance_scale=GUIDANCE, initial_noise=noise, sde=False)
    assert (with_lora - base).abs().max() > 1e-2
    torch.testing.assert_close(ours.final, with_lora, rtol=0, atol=1e-5)
    images = stock_sample(tiny_qwen, noise, "pt", lora=out)
    torch.testing.assert_close(policy.decode(ours.final), images, rtol=0, atol=1e-5)


def test_shard_units_cover_every_block(tiny_qwen: Path) -> None:
    for policy in (load_policy(tiny_qwen), load_policy(tiny_qwen, lora_rank=None)):
        assert_shard_units_cover_every_block(policy, ("transformer_blocks",))


@pytest.mark.slow
def test_vgpo_and_flow_grpo_train_through_the_cli_and_export(tiny_qwen: Path, tmp_path: Path) -> None:
    assert_train_through_cli("qwen_image", tiny_qwen, MODEL, tmp_path)


@pytest.mark.slow
def test_resume_is_bitwise(tiny_qwen: Path, tmp_path: Path) -> None:
    assert_resume_is_bitwise("qwen_image", tiny_qwen, MODEL, tmp_path)
