"""The FLUX.1 adapter on a tiny random-weight FLUX.1-dev-shaped pipeline built in a fixture (no download, ever):
the stock FluxPipeline's samples, the first PPO ratio, `vgpo train`, LoRA export into the stock pipeline, FSDP
shard units and a bitwise resume."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from diffusers import FluxPipeline

from fixtures_flux import FLUX_RESOLUTION, FLUX_TOKENS, build_tiny_flux_pipeline
from model_checks import (
    assert_first_ratio_is_one,
    assert_resume_is_bitwise,
    assert_shard_units_cover_every_block,
    assert_train_through_cli,
    perturb_lora,
)
from vgpo.errors import CheckpointError
from vgpo.models.base import Training, export_lora
from vgpo.models.flux import FluxPolicy, latent_image_ids, load_flux_policy, pack_latents, unpack_latents
from vgpo.policy import FlowPolicy
from vgpo.sampling import generate, rollout

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PROMPTS = ["a red cube", "a photo of a cat"]
MODEL = [
    f"model.options.resolution={FLUX_RESOLUTION}",
    f"model.options.max_sequence_length={FLUX_TOKENS}",
    "sampling.guidance_scale=3.5",
]


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-flux")
    build_tiny_flux_pipeline(folder)
    return folder


def load_policy(folder: Path, lora_rank: int | None = 4) -> FluxPolicy:
    return load_flux_policy(
        folder, dtype="fp32", device="cpu", training=Training(lora_rank=lora_rank, lora_alpha=8),
        resolution=FLUX_RESOLUTION, max_sequence_length=FLUX_TOKENS,
    )  # fmt: skip


@pytest.fixture
def policy(tiny_flux: Path) -> FluxPolicy:
    torch.manual_seed(0)
    return load_policy(tiny_flux)


def stock_pipeline(folder: Path) -> FluxPipeline:
    pipeline = FluxPipeline.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def stock_sample(pipeline: FluxPipeline, noise: torch.Tensor, output_type: str) -> torch.Tensor:
    """The stock pipeline from our unpacked noise [N, C, H, W], packed as its prepare_latents packs."""
    return pipeline(
        prompt=PROMPTS,
        height=FLUX_RESOLUTION,
        width=FLUX_RESOLUTION,
        num_inference_steps=4,
        guidance_scale=3.5,
        latents=pack_latents(noise),
        max_sequence_length=FLUX_TOKENS,
        output_type=output_type,
    ).images


def test_packing_round_trips_and_matches_the_pipelines() -> None:
    latents = torch.randn(2, 4, 6, 8, generator=torch.Generator().manual_seed(0))
    packed = pack_latents(latents)
    assert packed.shape == (2, 12, 16)
    torch.testing.assert_close(packed, FluxPipeline._pack_latents(latents, 2, 4, 6, 8), rtol=0, atol=0)
    torch.testing.assert_close(unpack_latents(packed, 6, 8), latents, rtol=0, atol=0)
    ids = latent_image_ids(3, 4, torch.device("cpu"), torch.float32)
    torch.testing.assert_close(ids, FluxPipeline._prepare_latent_image_ids(2, 3, 4, "cpu", torch.float32))


def test_loads_with_frozen_encoders_and_a_dynamically_shifted_schedule(policy: FluxPolicy, tiny_flux: Path) -> None:
    assert isinstance(policy, FlowPolicy)
    assert policy.latent_shape == (4, FLUX_RESOLUTION, FLUX_RESOLUTION)
    assert policy.fingerprint().startswith(f"flux:{tiny_flux.name}:")
    for frozen in (policy.adapter.vae, policy.adapter.pipeline.text_encoder, policy.adapter.pipeline.text_encoder_2):
        assert not any(parameter.requires_grad for parameter in frozen.parameters())
    # mu for 64 tokens: 0.5 + (64 - 256) * (1.15 - 0.5) / (4096 - 256) = 0.4675; sigma' = e^mu / (e^mu + 1/s - 1)
    mu = 0.5 + (64 - 256) * 0.65 / 3840
    linear = torch.tensor([1.0, 0.75, 0.5, 0.25], dtype=torch.float64)
    shifted = torch.exp(torch.tensor(mu)) / (torch.exp(torch.tensor(mu)) + 1 / linear - 1)
    expected = torch.cat([shifted, torch.zeros(1, dtype=torch.float64)]).float()
    torch.testing.assert_close(policy.sigma_schedule(4), expected, rtol=0, atol=1e-6)


def test_missing_folder_is_a_named_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="never downloads") as caught:
        load_flux_policy(tmp_path / "no-flux", device="cpu")
    assert "no-flux" in str(caught.value) and "huggingface-cli download black-forest-labs/FLUX.1-dev" in str(
        caught.value
    )


def test_ode_rollout_equals_the_stock_pipeline(policy: FluxPolicy, tiny_flux: Path) -> None:
    """Same initial noise, 4 steps, guidance 3.5: the final latents are bitwise the pipeline's (same kernels, same
    float32 Euler update), the decoded images within 1e-6 (the pipeline's postprocess rounds differently)."""
    noise = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(0))
    ours = rollout(policy, policy.encode_prompts(PROMPTS), 4, guidance_scale=3.5, initial_noise=noise, sde=False)
    stock = stock_pipeline(tiny_flux)
    stock_latents = unpack_latents(stock_sample(stock, noise, "latent"), FLUX_RESOLUTION, FLUX_RESOLUTION)
    torch.testing.assert_close(ours.final, stock_latents, rtol=0, atol=0)
    torch.testing.assert_close(policy.decode(ours.final), stock_sample(stock, noise, "pt"), rtol=0, atol=1e-6)


def test_guidance_is_an_embedding_not_a_cfg_pair(policy: FluxPolicy) -> None:
    cond = policy.encode_prompts(PROMPTS)
    latents = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(1))
    calls: list[int] = []
    hook = policy.denoiser.register_forward_hook(
        lambda module, args, kwargs, output: calls.append(kwargs["hidden_states"].shape[0]), with_kwargs=True
    )
    with torch.no_grad():
        low = policy.velocity(latents, torch.tensor([0.9, 0.4]), cond, guidance_scale=1.0)
        high = policy.velocity(latents, torch.tensor([0.9, 0.4]), cond, guidance_scale=3.5)
    hook.remove()
    assert calls == [2, 2]  # one call per velocity, on N rows (a CFG pair would be 2N)
    assert (high - low).abs().max() > 1e-4


def test_first_ppo_ratio_is_exactly_one(policy: FluxPolicy, tmp_path: Path) -> None:
    assert_first_ratio_is_one(policy, PROMPTS, guidance_scale=3.5, model_kind="flux", run_dir=tmp_path)


def test_exported_lora_in_the_stock_pipeline_gives_our_images(
    policy: FluxPolicy, tiny_flux: Path, tmp_path: Path
) -> None:
    perturb_lora(policy.denoiser)
    out = export_lora(policy, tmp_path / "lora")
    stock = stock_pipeline(tiny_flux)
    noise = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(2))
    base = stock_sample(stock, noise, "pt")
    stock.load_lora_weights(out)
    with_lora = stock_sample(stock, noise, "pt")
    ours = rollout(policy, policy.encode_prompts(PROMPTS), 4, guidance_scale=3.5, initial_noise=noise, sde=False)
    assert (with_lora - base).abs().max() > 1e-3
    torch.testing.assert_close(policy.decode(ours.final), with_lora, rtol=0, atol=1e-5)


def test_shard_units_cover_every_block(tiny_flux: Path) -> None:
    for policy in (load_policy(tiny_flux), load_policy(tiny_flux, lora_rank=None)):
        assert_shard_units_cover_every_block(policy, ("transformer_blocks", "single_transformer_blocks"))


def test_generate_is_seeded(policy: FluxPolicy) -> None:
    images = generate(policy, PROMPTS, num_steps=2, seed=3, guidance_scale=3.5)
    assert images.shape == (2, 3, FLUX_RESOLUTION, FLUX_RESOLUTION)
    torch.testing.assert_close(generate(policy, PROMPTS, num_steps=2, seed=3, guidance_scale=3.5), images)


@pytest.mark.slow  # 62 s here; the default run keeps test_resume_is_bitwise (VGPO through `vgpo train`)
def test_vgpo_and_flow_grpo_train_through_the_cli_and_export(tiny_flux: Path, tmp_path: Path) -> None:
    assert_train_through_cli("flux", tiny_flux, MODEL, tmp_path)


def test_resume_is_bitwise(tiny_flux: Path, tmp_path: Path) -> None:
    assert_resume_is_bitwise("flux", tiny_flux, MODEL, tmp_path)
