"""The Wan2.1 text-to-video adapter on a tiny random-weight pipeline built in a fixture (no download, ever): the
stock WanPipeline's videos, the first PPO ratio, videos scored as their frames' mean, GIFs at evaluation,
`vgpo train` with both methods, LoRA export into the stock pipeline, FSDP shard units and a bitwise resume."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
from PIL import Image

from fixtures_wan import WAN_FRAMES, WAN_RESOLUTION, WAN_TOKENS, build_tiny_wan_pipeline
from model_checks import (
    assert_first_ratio_is_one,
    assert_resume_is_bitwise,
    assert_shard_units_cover_every_block,
    assert_train_through_cli,
    perturb_lora,
    vgpo,
)
from vgpo.errors import CheckpointError, ConfigError
from vgpo.evaluation import save_gifs
from vgpo.models.base import Training, export_lora
from vgpo.models.wan import WanPolicy, load_wan_policy
from vgpo.policy import FlowPolicy
from vgpo.rewards import checked_call
from vgpo.sampling import rollout

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PROMPTS = ["a red cube", "a photo of a cat"]
GUIDANCE = 5.0
MODEL = [
    f"model.options.resolution={WAN_RESOLUTION}",
    f"model.options.max_sequence_length={WAN_TOKENS}",
    f"model.options.num_frames={WAN_FRAMES}",
    "model.decode_batch_size=4",
    f"sampling.guidance_scale={GUIDANCE}",
]


@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-wan")
    build_tiny_wan_pipeline(folder)
    return folder


def load_policy(folder: Path, lora_rank: int | None = 4, num_frames: int = WAN_FRAMES) -> WanPolicy:
    return load_wan_policy(
        folder, dtype="fp32", device="cpu", training=Training(lora_rank=lora_rank, lora_alpha=8, decode_batch_size=4),
        resolution=WAN_RESOLUTION, num_frames=num_frames, flow_shift=3.0, max_sequence_length=WAN_TOKENS,
    )  # fmt: skip


@pytest.fixture
def policy(tiny_wan: Path) -> WanPolicy:
    torch.manual_seed(0)
    return load_policy(tiny_wan)


def stock_videos(folder: Path, noise: torch.Tensor, output_type: str, lora: Path | None = None) -> torch.Tensor:
    """The stock pipeline with the Euler scheduler at the policy's flow_shift (Wan ships UniPC; vgpo samples Euler)."""
    pipeline = WanPipeline.from_pretrained(folder)
    pipeline.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipeline.set_progress_bar_config(disable=True)
    if lora is not None:
        pipeline.load_lora_weights(lora)
    return pipeline(
        prompt=PROMPTS,
        height=WAN_RESOLUTION,
        width=WAN_RESOLUTION,
        num_frames=WAN_FRAMES,
        num_inference_steps=4,
        guidance_scale=GUIDANCE,
        latents=noise.clone(),
        max_sequence_length=WAN_TOKENS,
        output_type=output_type,
    ).frames


def test_loads_video_latents_with_frozen_encoders(policy: WanPolicy, tiny_wan: Path) -> None:
    assert isinstance(policy, FlowPolicy)
    assert policy.latent_shape == (16, 2, 2, 2)  # C, (5 - 1) / 4 + 1 frames, 16 / 8 pixels
    assert policy.fingerprint().startswith(f"wan:{tiny_wan.name}:")
    for frozen in (policy.adapter.vae, policy.adapter.pipeline.text_encoder):
        assert not any(parameter.requires_grad for parameter in frozen.parameters())
    # Euler sigmas at shift 3: s' = 3 s / (1 + 2 s) on linspace(1, sigma_min, 4), where diffusers' sigma_min is the
    # shifted 1/1000 itself: 3 * 0.001 / 1.002
    linear = torch.linspace(1.0, 0.003 / 1.002, 4, dtype=torch.float64)
    expected = torch.cat([3 * linear / (1 + 2 * linear), torch.zeros(1, dtype=torch.float64)]).float()
    torch.testing.assert_close(policy.sigma_schedule(4), expected, rtol=0, atol=1e-6)


def test_bad_frame_count_and_missing_folder_are_named_errors(tiny_wan: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="num_frames=6 must be 1 \\+ a multiple of 4"):
        load_policy(tiny_wan, num_frames=6)
    with pytest.raises(CheckpointError, match=re.escape("Wan-AI/Wan2.1-T2V-1.3B-Diffusers")):
        load_wan_policy(tmp_path / "no-wan", device="cpu")


def test_ode_rollout_equals_the_stock_pipeline(policy: WanPolicy, tiny_wan: Path) -> None:
    """Same noise, 4 Euler steps, CFG 5: the final latents within 1e-5 of the pipeline's (our CFG pair is one batched
    call, the pipeline's two calls; seen: 1.8e-6), the decoded frames within 1e-5 (seen: 1.8e-7)."""
    noise = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(0))
    ours = rollout(policy, policy.encode_prompts(PROMPTS), 4, guidance_scale=GUIDANCE, initial_noise=noise, sde=False)
    torch.testing.assert_close(ours.final, stock_videos(tiny_wan, noise, "latent"), rtol=0, atol=1e-5)
    videos = policy.decode(ours.final)
    assert videos.shape == (2, WAN_FRAMES, 3, WAN_RESOLUTION, WAN_RESOLUTION)
    torch.testing.assert_close(videos, stock_videos(tiny_wan, noise, "pt"), rtol=0, atol=1e-5)


def test_first_ppo_ratio_is_exactly_one(policy: WanPolicy, tmp_path: Path) -> None:
    assert_first_ratio_is_one(
        policy, PROMPTS, guidance_scale=GUIDANCE, model_kind="wan", run_dir=tmp_path
    )  # fmt: skip


def test_a_video_reward_is_the_mean_of_its_frames_image_rewards() -> None:
    videos = torch.rand(2, 3, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    seen: list[int] = []

    def brightness(images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
        seen.append(images.shape[0])
        assert prompts == ["a", "a", "a", "b", "b", "b"]  # each frame carries its video's prompt
        return images.mean(dim=(1, 2, 3))

    scores = checked_call(brightness, videos, ["a", "b"], [{}, {}])
    assert seen == [6]  # one call on the N * F frames
    torch.testing.assert_close(scores, videos.mean(dim=(2, 3, 4)).mean(dim=1))


def test_gifs_hold_every_frame(tmp_path: Path) -> None:
    videos = torch.zeros(2, 3, 3, 8, 8)
    videos[:, 1, 0] = 1.0  # the second frame of each video is red
    paths = save_gifs(videos, tmp_path / "eval")
    assert [path.name for path in paths] == ["sample_000.gif", "sample_001.gif"]
    with Image.open(paths[0]) as gif:
        assert gif.n_frames == 3
        gif.seek(1)
        assert gif.convert("RGB").getpixel((0, 0)) == (255, 0, 0)


def test_exported_lora_in_the_stock_pipeline_gives_our_videos(
    policy: WanPolicy, tiny_wan: Path, tmp_path: Path
) -> None:
    perturb_lora(policy.denoiser)
    out = export_lora(policy, tmp_path / "lora")
    noise = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(2))
    base = stock_videos(tiny_wan, noise, "latent")
    with_lora = stock_videos(tiny_wan, noise, "latent", lora=out)
    ours = rollout(policy, policy.encode_prompts(PROMPTS), 4, guidance_scale=GUIDANCE, initial_noise=noise, sde=False)
    assert (with_lora - base).abs().max() > 1e-2  # (the tiny random VAE shrinks the difference in pixels)
    torch.testing.assert_close(ours.final, with_lora, rtol=0, atol=1e-5)
    frames = stock_videos(tiny_wan, noise, "pt", lora=out)
    torch.testing.assert_close(policy.decode(ours.final), frames, rtol=0, atol=1e-5)


def test_shard_units_cover_every_block(tiny_wan: Path) -> None:
    for policy in (load_policy(tiny_wan), load_policy(tiny_wan, lora_rank=None)):
        assert_shard_units_cover_every_block(policy, ("blocks",))


@pytest.mark.slow  # 60 s on the shared 2-core machine
def test_vgpo_and_flow_grpo_train_through_the_cli_write_gifs_and_export(tiny_wan: Path, tmp_path: Path) -> None:
    assert_train_through_cli("wan", tiny_wan, MODEL, tmp_path)
    gifs = sorted((tmp_path / "vgpo" / "samples" / "eval_000001").glob("*.gif"))
    assert len(gifs) == 2  # sampling.eval_max_prompts=2 x eval_samples_per_prompt=1
    checkpoint = tmp_path / "vgpo" / "checkpoints" / "iter_000001"
    result = vgpo(
        "sample", "--checkpoint", str(checkpoint), "--prompts", "a red cube", "--steps", "2", "--num-per-prompt", "2",
        "--guidance-scale", str(GUIDANCE), "--device", "cpu", "--out", str(tmp_path / "videos"), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with Image.open(tmp_path / "videos" / "sample_001.gif") as gif:
        assert gif.n_frames == WAN_FRAMES and gif.size == (WAN_RESOLUTION, WAN_RESOLUTION)


@pytest.mark.slow  # 72 s on the shared 2-core machine; FLUX's resume runs by default
def test_resume_is_bitwise(tiny_wan: Path, tmp_path: Path) -> None:
    assert_resume_is_bitwise("wan", tiny_wan, MODEL, tmp_path)
