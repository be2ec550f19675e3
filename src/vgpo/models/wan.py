"""Wan2.1 text-to-video as a :class:`vgpo.policy.FlowPolicy`, through diffusers' ``WanPipeline`` (diffusers 0.42,
``pipelines/wan/pipeline_wan.py``).

What is Wan-specific, each as the stock pipeline does it:
- the latents are videos, [N, C, F, H, W] (C = 16, F = (frames - 1) / 4 + 1 for the real VAE's 4x temporal and 8x
  spatial compression); ``latent_shape`` is (C, F, H, W) and the SDE math is element-wise over all of it;
- the time: the transformer takes timestep = sigma * 1000 (``scheduler.timesteps``) and predicts noise - data;
- the schedule: Euler on sigmas ``shift * s / (1 + (shift - 1) s)`` with Wan's ``flow_shift`` (3.0 at 480p, 5.0 at
  720p in Wan's model card). The released pipeline ships a UniPC multistep scheduler; vgpo's SDE / ODE sampler is
  Euler, so the schedule is a ``FlowMatchEulerDiscreteScheduler`` with that shift (the stock pipeline samples the same
  when given that scheduler);
- CFG: true classifier-free guidance with a negative prompt, ``uncond + s * (cond - uncond)`` (one batched call here;
  the pipeline makes two calls);
- decoding: latents * std + mean per channel (``vae.config.latents_mean / latents_std``), the video VAE, frames
  [N, F_video, 3, H, W] in [0, 1]. A reward scores a video as the mean of its frames' image scores
  (:mod:`vgpo.rewards.video`), and evaluation writes a GIF per sample.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from vgpo.errors import ConfigError
from vgpo.models.diffusers_plumbing import TrainedTransformer, freeze, load_pipeline
from vgpo.policy import Conditioning

DOWNLOAD_HINT = (
    "`huggingface-cli download Wan-AI/Wan2.1-T2V-1.3B-Diffusers --local-dir /data/wan2.1-t2v-1.3b` (or the 14B)"
)
WAN_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
"""The attention projections of Wan's self- and cross-attention (every block)."""
DEFAULT_OPTIONS = {"num_frames": 33, "flow_shift": 3.0}
"""``model.options`` defaults: 33 frames (9 latent frames; Wan2.1 generates up to 81) and the 480p shift."""


class WanPolicy:
    """A ``WanPipeline``'s transformer as the RL policy. Conditioning keys (one row per prompt): ``prompt_embeds``
    [B, L, D] and ``negative_prompt_embeds`` [B, L, D] (UMT5)."""

    def __init__(
        self,
        pipeline: Any,
        *,
        base_model: str,
        lora_rank: int | None = 32,
        lora_alpha: float = 64.0,
        lora_targets: Sequence[str] = WAN_LORA_TARGETS,
        gradient_checkpointing: bool = True,
        resolution: int = 480,
        num_frames: int = 33,
        flow_shift: float = 3.0,
        negative_prompt: str = "",
        max_sequence_length: int = 226,
        decode_batch_size: int = 1,
    ) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.pipeline = pipeline
        self.vae = pipeline.vae
        self.negative_prompt = negative_prompt
        self.max_sequence_length = max_sequence_length
        self.decode_batch_size = decode_batch_size
        spatial = int(pipeline.vae_scale_factor_spatial)
        temporal = int(pipeline.vae_scale_factor_temporal)
        patch = tuple(pipeline.transformer.config.patch_size)
        if resolution % (spatial * patch[1]) != 0:
            raise ValueError(f"resolution {resolution} must be a multiple of {spatial * patch[1]} (VAE x patch)")
        if num_frames < 1 or (num_frames - 1) % temporal != 0:
            raise ConfigError(f"model.options.num_frames={num_frames} must be 1 + a multiple of {temporal} (Wan's VAE)")
        self.resolution = resolution
        self.num_frames = num_frames
        self.latent_frames = (num_frames - 1) // temporal + 1
        self.spatial = spatial
        num_train_timesteps = int(pipeline.scheduler.config.get("num_train_timesteps", 1000))
        self.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=flow_shift)
        self.num_train_timesteps = num_train_timesteps
        freeze(self.vae, pipeline.text_encoder)
        self.trained = TrainedTransformer(
            pipeline.transformer,
            kind="wan",
            base_model=base_model,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            lora_targets=lora_targets,
            gradient_checkpointing=gradient_checkpointing,
            block_lists=("blocks",),
        )
        self.transformer = pipeline.transformer
        self.lora_rank = lora_rank

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike[str], *, dtype: str = "bf16", **kwargs: Any) -> WanPolicy:
        """Load a Wan2.1 T2V diffusers folder (``WanPipeline``); keyword arguments as :class:`WanPolicy`'s, plus
        ``device``. :class:`CheckpointError` (naming the fix) when the folder is missing; nothing is downloaded."""
        from diffusers import WanPipeline

        device = kwargs.pop("device", None)
        pipeline = load_pipeline(WanPipeline, path_or_hub_id, dtype=dtype, device=device, download_hint=DOWNLOAD_HINT)
        return cls(pipeline, base_model=os.fspath(path_or_hub_id), **kwargs)

    # ------------------------------------------------------------------ FlowPolicy
    @property
    def device(self) -> torch.device:
        return torch.device(self.transformer.device)

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """(C, F, H, W) of one video latent."""
        side = self.resolution // self.spatial
        return (int(self.transformer.config.in_channels), self.latent_frames, side, side)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """UMT5 embeddings of B prompts and of the negative prompt, through the pipeline's ``encode_prompt``."""
        prompts = list(prompts)
        prompt_embeds, negative_embeds = self.pipeline.encode_prompt(
            prompt=prompts,
            negative_prompt=[self.negative_prompt] * len(prompts),
            do_classifier_free_guidance=True,
            max_sequence_length=self.max_sequence_length,
            device=self.device,
        )
        return {"prompt_embeds": prompt_embeds.to(self.dtype), "negative_prompt_embeds": negative_embeds.to(self.dtype)}

    def velocity(
        self, latents: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, guidance_scale: float = 1.0
    ) -> torch.Tensor:
        """v = noise - data [N, C, F, H, W] float32 at sigma [N]; with ``guidance_scale`` > 1 one batched call on
        [uncond rows; cond rows], combined in float32."""
        guided = guidance_scale > 1.0
        hidden = latents.to(self.device, self.dtype)
        timestep = sigma.to(self.device, torch.float32) * self.num_train_timesteps  # the pipeline's t, float32
        prompt_embeds = cond["prompt_embeds"]
        if guided:
            hidden = torch.cat([hidden, hidden], dim=0)  # [2N, C, F, H, W]: uncond rows, then cond rows
            timestep = torch.cat([timestep, timestep], dim=0)
            prompt_embeds = torch.cat([cond["negative_prompt_embeds"], prompt_embeds], dim=0)
        output = self.trained.active(
            hidden_states=hidden,
            timestep=timestep,
            encoder_hidden_states=prompt_embeds.to(self.device, self.dtype),
            return_dict=False,
        )[0].float()
        if not guided:
            return output
        uncond, conditional = output.chunk(2, dim=0)
        return uncond + guidance_scale * (conditional - uncond)

    def sigma_schedule(self, num_steps: int) -> torch.Tensor:
        """T + 1 sigmas float32 on CPU, 1 to 0: Euler's, shifted by ``flow_shift``."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {num_steps}")
        self.scheduler.set_timesteps(num_steps, device="cpu")
        return self.scheduler.sigmas.detach().to("cpu", torch.float32).clone()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Videos [N, F_video, 3, H, W] float32 in [0, 1] from latents [N, C, F, H, W], as ``WanPipeline`` decodes."""
        config = self.vae.config
        videos = []
        for chunk in latents.split(self.decode_batch_size, dim=0):
            chunk = chunk.to(self.device, self.vae.dtype)
            shape = (1, config.z_dim, 1, 1, 1)
            mean = torch.tensor(config.latents_mean).view(shape).to(chunk.device, chunk.dtype)
            inverse_std = 1.0 / torch.tensor(config.latents_std).view(shape).to(chunk.device, chunk.dtype)
            decoded = self.vae.decode(chunk / inverse_std + mean, return_dict=False)[0]  # [n, 3, F, H, W]
            videos.append((decoded.float().permute(0, 2, 1, 3, 4) / 2 + 0.5).clamp(0, 1))
        return torch.cat(videos, dim=0)

    def trainable_parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.trained.parameters()

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return self.trained.state_dict()

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.trained.load_state_dict(state)

    def shard_units(self) -> list[torch.nn.Module]:
        """Each transformer block, then the transformer (and the same of the frozen full copy)."""
        return self.trained.shard_units()

    def reference(self) -> AbstractContextManager[None]:
        return self.trained.reference()

    def fingerprint(self) -> str:
        return self.trained.fingerprint()

    def export_lora(self, folder: str | os.PathLike[str]) -> Path:
        """LoRA for ``WanPipeline.from_pretrained(base).load_lora_weights(folder)``."""
        from diffusers import WanPipeline

        return self.trained.export_lora(WanPipeline, folder)


def from_model_config(config: Any, device: torch.device) -> WanPolicy:
    """The policy a :class:`vgpo.config.ModelConfig` describes (``model.kind: wan``; ``model.options`` takes
    ``num_frames`` and ``flow_shift``)."""
    if config.path is None:
        raise ConfigError("model.kind=wan needs model.path: a local Wan2.1 T2V diffusers folder")
    options = dict(config.options or {})
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise ConfigError(f"model.options {unknown} are not Wan options; it takes {sorted(DEFAULT_OPTIONS)}")
    options = {**DEFAULT_OPTIONS, **options}
    rank = config.lora_rank
    return WanPolicy.from_pretrained(
        config.path,
        dtype=config.dtype,
        device=device,
        lora_rank=rank,
        lora_alpha=config.lora_alpha if config.lora_alpha is not None else float(rank or 1),
        lora_targets=WAN_LORA_TARGETS if config.lora_targets is None else config.lora_targets,
        gradient_checkpointing=config.gradient_checkpointing,
        resolution=config.resolution,
        num_frames=int(options["num_frames"]),
        flow_shift=float(options["flow_shift"]),
        negative_prompt=config.negative_prompt,
        max_sequence_length=config.max_sequence_length,
        decode_batch_size=config.decode_batch_size,
    )
