"""Stable Diffusion 3 / 3.5 (the paper's base model, SD3.5-Medium) as a :class:`vgpo.policy.FlowPolicy`.

Wraps the components of a diffusers ``StableDiffusion3Pipeline``: the MMDiT transformer (the policy, with
LoRA adapters through peft), the VAE (decoding latents for rewards) and the three text encoders (CLIP-L,
CLIP-G, T5-XXL; frozen, used once per prompt batch). Everything that depends on diffusers' conventions lives
here: the timestep the transformer expects (sigma * num_train_timesteps), the scheduler's shifted sigmas,
and the VAE's scaling and shift factors.
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
from vgpo.models.lora import LORA_TARGETS
from vgpo.policy import Conditioning

DEFAULT_LORA_TARGETS = LORA_TARGETS

DEFAULTS = AdapterDefaults(
    lora_alpha_per_rank=2.0, lora_targets=LORA_TARGETS, lora_init="gaussian", decode_batch_size=8
)
"""Flow-GRPO's SD3.5 LoRA (rank 32, alpha 64, gaussian A) and 8 latents per VAE call."""


@dataclasses.dataclass
class SD3Options:
    """``model.options`` of ``model.kind=sd3`` (also read from the legacy top-level ``model`` keys)."""

    resolution: int = 512
    """Image side in pixels (a multiple of VAE downsampling x patch size)."""
    negative_prompt: str = ""
    """Prompt of the unconditional branch of classifier-free guidance."""
    max_sequence_length: int = 256
    """T5 tokens per prompt (the stock pipeline's default is 256)."""


class SD3Adapter(TransformerAdapter):
    """The model-specific part of SD3 (:class:`vgpo.models.base.FlowModelAdapter`).

    Conditioning keys (each with one row per prompt): ``prompt_embeds`` [B, L, D] and ``pooled`` [B, P]
    for the prompt, ``negative_prompt_embeds`` and ``negative_pooled`` for the negative prompt that
    classifier-free guidance uses (the same negative repeated on every row, so rows can be selected freely).
    """

    kind = "sd3"

    guidance: Guidance = "cfg"
    state_prefix = ""
    lora_export: LoraExport | None = LoraExport("StableDiffusion3Pipeline")

    def __init__(self, pipeline: Any, *, base_model: str, options: SD3Options) -> None:
        """Wrap an already-loaded ``StableDiffusion3Pipeline`` (on its final device and dtype); freezes its VAE and
        text encoders."""
        self.pipeline = pipeline
        self.transformer = pipeline.transformer
        self.vae = pipeline.vae
        self.base_model = base_model
        self.negative_prompt = options.negative_prompt
        self.max_sequence_length = options.max_sequence_length
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        patch = self.transformer.config.patch_size
        if options.resolution % (self.vae_scale_factor * patch) != 0:
            raise ConfigError(
                f"model.options.resolution {options.resolution} must be a multiple of "
                f"{self.vae_scale_factor * patch} (VAE downsampling {self.vae_scale_factor} x patch size {patch})"
            )
        self.resolution = options.resolution
        # A private scheduler copy: sigma_schedule() calls set_timesteps, which mutates scheduler state.
        self.scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config)
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        freeze(self.vae, pipeline.text_encoder, pipeline.text_encoder_2, pipeline.text_encoder_3)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        side = self.resolution // self.vae_scale_factor
        return (int(self.transformer.config.in_channels), side, side)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Prompt and negative-prompt embeddings of B prompts, through the pipeline's own ``encode_prompt``."""
        prompts = list(prompts)
        prompt_embeds, negative_embeds, pooled, negative_pooled = self.pipeline.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            negative_prompt=[self.negative_prompt] * len(prompts),
            do_classifier_free_guidance=True,
            device=self.device,
            max_sequence_length=self.max_sequence_length,
        )
        return {
            "prompt_embeds": prompt_embeds.to(self.dtype),
            "pooled": pooled.to(self.dtype),
            "negative_prompt_embeds": negative_embeds.to(self.dtype),
            "negative_pooled": negative_pooled.to(self.dtype),
        }

    def negative(self, cond: Conditioning) -> Conditioning:
        """The negative prompt's rows, under the keys :meth:`predict_velocity` reads."""
        return {"prompt_embeds": cond["negative_prompt_embeds"], "pooled": cond["negative_pooled"]}

    def predict_velocity(
        self,
        denoiser: nn.Module,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        cond: Conditioning,
        guidance_scale: float,
    ) -> torch.Tensor:
        """v = x1 - x0 [N, C, H, W] from latents [N, C, H, W] at noise levels sigma [N].

        The transformer takes timestep = sigma * num_train_timesteps (what diffusers' SD3 pipeline passes:
        ``scheduler.timesteps``).
        """
        return denoiser(
            hidden_states=latents.to(self.device, self.dtype),
            timestep=sigma.to(self.device, torch.float32) * self.num_train_timesteps,
            encoder_hidden_states=cond["prompt_embeds"].to(self.device, self.dtype),
            pooled_projections=cond["pooled"].to(self.device, self.dtype),
            return_dict=False,
        )[0]

    def combine_guidance(self, v_uncond: torch.Tensor, v_cond: torch.Tensor, scale: float) -> torch.Tensor:
        return cfg_combine(v_uncond, v_cond, scale)

    def sigma_schedule(self, num_steps: int) -> torch.Tensor:
        """T + 1 sigmas [T + 1] float32 on CPU, from 1 to 0, exactly the scheduler's (its shift included)."""
        extra: dict[str, Any] = {}
        if self.scheduler.config.get("use_dynamic_shifting", False):
            # What the pipeline does for resolution-dependent shifting (mu from the image token count).
            from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

            _, height, width = self.latent_shape
            patch = self.transformer.config.patch_size
            config = self.scheduler.config
            extra["mu"] = calculate_shift(
                (height // patch) * (width // patch),
                config.get("base_image_seq_len", 256),
                config.get("max_image_seq_len", 4096),
                config.get("base_shift", 0.5),
                config.get("max_shift", 1.16),
            )
        self.scheduler.set_timesteps(num_steps, device="cpu", **extra)
        return self.scheduler.sigmas.detach().to("cpu", torch.float32).clone()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images [n, 3, H_img, W_img] float32 in [0, 1] through the VAE (its scaling and shift factors)."""
        config = self.vae.config
        scaled = latents.to(self.device, self.vae.dtype) / config.scaling_factor + (config.shift_factor or 0.0)
        decoded = self.vae.decode(scaled, return_dict=False)[0]
        return (decoded.float() / 2 + 0.5).clamp(0, 1)

    def blocks(self, denoiser: nn.Module) -> list[nn.Module]:
        """The joint (MMDiT) blocks; the VAE and text encoders (frozen, used outside the update) stay whole."""
        return list(denoiser.transformer_blocks)  # type: ignore[arg-type]


SD3Policy = AdapterPolicy[SD3Adapter]
"""The type of an SD3 policy (for annotations; build one with :func:`sd3_policy` or :func:`load_sd3_policy`)."""


DOWNLOAD_HINT = (
    "e.g. `huggingface-cli download stabilityai/stable-diffusion-3.5-medium --local-dir /data/sd3.5-medium`, after "
    "accepting its licence on the hub"
)
SD3 = DiffusersFamily(
    "sd3",
    "StableDiffusion3Pipeline",
    SD3Adapter,
    SD3Options,
    DEFAULTS,
    folder="a local SD3.5 folder or a hub id",
    download_hint=DOWNLOAD_HINT,
)
"""How ``model.kind=sd3`` and :func:`load_sd3_policy` load a pipeline folder."""


@register_model("sd3", options=SD3Options, defaults=DEFAULTS)
def load_sd3(request: LoadRequest, options: SD3Options) -> SD3Adapter:
    """``model.kind=sd3``: an SD3 / SD3.5 pipeline folder (or hub id) named by ``model.path``."""
    return SD3.load(request, options)


def sd3_policy(
    pipeline: Any,
    *,
    base_model: str,
    lora_rank: int | None = 32,
    lora_alpha: float = 64.0,
    lora_targets: Sequence[str] = DEFAULT_LORA_TARGETS,
    lora_init: str = "gaussian",
    gradient_checkpointing: bool = True,
    resolution: int = 512,
    negative_prompt: str = "",
    max_sequence_length: int = 256,
    decode_batch_size: int = 8,
) -> AdapterPolicy[SD3Adapter]:
    """The RL policy of an already-loaded pipeline (``lora_rank=None``: full fine-tuning of the transformer, whose
    frozen reference copy doubles its memory)."""
    options = SD3Options(resolution, negative_prompt, max_sequence_length)
    training = Training(
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        lora_targets=tuple(lora_targets),
        lora_init=lora_init,
        gradient_checkpointing=gradient_checkpointing,
        decode_batch_size=decode_batch_size,
    )
    return AdapterPolicy(SD3Adapter(pipeline, base_model=base_model, options=options), training, DEFAULTS)


def load_sd3_policy(
    path_or_hub_id: str | os.PathLike[str],
    *,
    full_finetune: bool = False,
    lora_rank: int = 32,
    dtype: str = "bf16",
    device: str | torch.device | None = None,
    **settings: Any,
) -> AdapterPolicy[SD3Adapter]:
    """:func:`sd3_policy` of the pipeline in a folder or hub id (``device`` None: CUDA when available)."""
    pipeline = SD3.load_pipeline(path_or_hub_id, dtype, device)
    return sd3_policy(
        pipeline, base_model=os.fspath(path_or_hub_id), lora_rank=None if full_finetune else lora_rank, **settings
    )
