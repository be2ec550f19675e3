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

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from vgpo.errors import ConfigError
from vgpo.models import LoadRequest, register_model
from vgpo.models.base import (
    AdapterDefaults,
    AdapterPolicy,
    Guidance,
    LoraExport,
    Training,
    cfg_combine,
)
from vgpo.models.diffusers_loading import DiffusersFamily, TransformerAdapter, freeze
from vgpo.policy import Conditioning

DOWNLOAD_HINT = (
    "`huggingface-cli download Wan-AI/Wan2.1-T2V-1.3B-Diffusers --local-dir /data/wan2.1-t2v-1.3b` (or the 14B)"
)
WAN_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
"""The attention projections of Wan's self- and cross-attention (every block)."""
DEFAULTS = AdapterDefaults(
    lora_alpha_per_rank=2.0, lora_targets=WAN_LORA_TARGETS, lora_init="gaussian", decode_batch_size=1
)
"""LoRA rank 32, alpha 64 on the attention projections; one video per VAE call (video decoding is memory-heavy)."""


@dataclasses.dataclass
class WanOptions:
    """``model.options`` of ``model.kind=wan``."""

    resolution: int = 480
    """Square video side in pixels (a multiple of 16: VAE 8 x patch 2)."""
    num_frames: int = 33
    """Frames per video, 1 + a multiple of 4 (Wan's VAE compresses time 4x; 33 frames are 9 latent frames)."""
    flow_shift: float = 3.0
    """Shift of the Euler schedule, s' = shift s / (1 + (shift - 1) s): 3.0 at 480p, 5.0 at 720p (Wan's card)."""
    negative_prompt: str = ""
    """Prompt of the unconditional branch of classifier-free guidance."""
    max_sequence_length: int = 226
    """UMT5 tokens per prompt (WanPipeline's default)."""


class WanAdapter(TransformerAdapter):
    """The model-specific part of Wan2.1 T2V (:class:`vgpo.models.base.FlowModelAdapter`). Conditioning keys (one
    row per prompt): ``prompt_embeds`` [B, L, D] and ``negative_prompt_embeds`` [B, L, D] (UMT5)."""

    kind = "wan"

    guidance: Guidance = "cfg"
    state_prefix = ""
    lora_export: LoraExport | None = LoraExport("WanPipeline")

    def __init__(self, pipeline: Any, *, base_model: str, options: WanOptions) -> None:
        """Wrap an already-loaded ``WanPipeline`` (on its final device and dtype); freezes its VAE and text encoder."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.pipeline = pipeline
        self.transformer = pipeline.transformer
        self.vae = pipeline.vae
        self.base_model = base_model
        self.negative_prompt = options.negative_prompt
        self.max_sequence_length = options.max_sequence_length
        self.spatial = int(pipeline.vae_scale_factor_spatial)
        temporal = int(pipeline.vae_scale_factor_temporal)
        patch = tuple(self.transformer.config.patch_size)
        if options.resolution % (self.spatial * patch[1]) != 0:
            raise ConfigError(
                f"model.options.resolution {options.resolution} must be a multiple of {self.spatial * patch[1]} "
                f"(VAE downsampling {self.spatial} x patch size {patch[1]})"
            )
        if options.num_frames < 1 or (options.num_frames - 1) % temporal != 0:
            raise ConfigError(
                f"model.options.num_frames={options.num_frames} must be 1 + a multiple of {temporal} (Wan's VAE)"
            )
        self.resolution = options.resolution
        self.latent_frames = (options.num_frames - 1) // temporal + 1
        self.num_train_timesteps = int(pipeline.scheduler.config.get("num_train_timesteps", 1000))
        self.scheduler: Any = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=self.num_train_timesteps, shift=options.flow_shift
        )
        freeze(self.vae, pipeline.text_encoder)

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

    def negative(self, cond: Conditioning) -> Conditioning:
        return {"prompt_embeds": cond["negative_prompt_embeds"]}

    def predict_velocity(
        self, denoiser: nn.Module, latents: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, guidance_scale: float
    ) -> torch.Tensor:
        """v = noise - data [N, C, F, H, W] at sigma [N]; the transformer takes timestep = sigma * 1000 in float32
        (the pipeline's ``t.expand(N)``)."""
        return denoiser(
            hidden_states=latents.to(self.device, self.dtype),
            timestep=sigma.to(self.device, torch.float32) * self.num_train_timesteps,
            encoder_hidden_states=cond["prompt_embeds"].to(self.device, self.dtype),
            return_dict=False,
        )[0]

    def combine_guidance(self, v_uncond: torch.Tensor, v_cond: torch.Tensor, scale: float) -> torch.Tensor:
        return cfg_combine(v_uncond, v_cond, scale)

    def sigma_schedule(self, num_steps: int) -> torch.Tensor:
        """T + 1 sigmas float32 on CPU, 1 to 0: Euler's, shifted by ``flow_shift``."""
        self.scheduler.set_timesteps(num_steps, device="cpu")
        return self.scheduler.sigmas.detach().to("cpu", torch.float32).clone()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Videos [n, F_video, 3, H, W] float32 in [0, 1] from latents [n, C, F, H, W], as ``WanPipeline`` decodes
        (latents / (1 / std) + mean per channel; frames first, so that a video's frames are images)."""
        config = self.vae.config
        chunk = latents.to(self.device, self.vae.dtype)
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean).view(shape).to(chunk.device, chunk.dtype)
        inverse_std = 1.0 / torch.tensor(config.latents_std).view(shape).to(chunk.device, chunk.dtype)
        decoded = self.vae.decode(chunk / inverse_std + mean, return_dict=False)[0]  # [n, 3, F, H, W]
        return (decoded.float().permute(0, 2, 1, 3, 4) / 2 + 0.5).clamp(0, 1)

    def blocks(self, denoiser: nn.Module) -> list[nn.Module]:
        return list(denoiser.blocks)  # type: ignore[arg-type]


WAN = DiffusersFamily(
    "wan",
    "WanPipeline",
    WanAdapter,
    WanOptions,
    DEFAULTS,
    folder="a local Wan2.1 T2V diffusers folder",
    download_hint=DOWNLOAD_HINT,
)
"""How ``model.kind=wan`` and :func:`load_wan_policy` load a pipeline folder."""

WanPolicy = AdapterPolicy[WanAdapter]
"""The type of a Wan policy (build one with :func:`load_wan_policy` or ``model.kind=wan``)."""


@register_model("wan", options=WanOptions, defaults=DEFAULTS)
def load_wan(request: LoadRequest, options: WanOptions) -> WanAdapter:
    """``model.kind=wan``: a Wan2.1 T2V diffusers folder named by ``model.path`` (nothing is downloaded)."""
    return WAN.load(request, options)


def load_wan_policy(
    path: str | os.PathLike[str],
    *,
    dtype: str = "bf16",
    device: str | torch.device | None = None,
    training: Training | None = None,
    **options: Any,
) -> AdapterPolicy[WanAdapter]:
    """The policy of the Wan pipeline in ``path`` (``options`` as :class:`WanOptions`; ``training`` LoRA rank 32 by
    default)."""
    return WAN.policy(path, dtype=dtype, device=device, training=training, options=options)
