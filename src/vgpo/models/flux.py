"""FLUX.1 (dev; schnell works the same without guidance) as a :class:`vgpo.policy.FlowPolicy`, through diffusers'
``FluxPipeline`` (diffusers 0.42, ``pipelines/flux/pipeline_flux.py``).

What is FLUX-specific, each as the stock pipeline does it:
- the latents: vgpo keeps them unpacked, [N, C, H, W] (C = 16 for the real VAE), so the SDE math sees the same
  elements the pipeline does; the transformer takes them packed into 2 x 2 patches, [N, H/2 * W/2, 4C]
  (``FluxPipeline._pack_latents``), with one (0, row, column) id per patch;
- the time: the transformer takes timestep = sigma (``timestep / 1000`` of the scheduler's ``sigma * 1000``) and
  predicts noise - data, vgpo's velocity;
- the schedule: sigmas ``linspace(1, 1/T, T)`` shifted by ``exp(mu) / (exp(mu) + 1/sigma - 1)``, with mu linear in
  the image's token count (``calculate_shift``: 0.5 at 256 tokens, 1.15 at 4096): larger images get more
  high-noise steps;
- guidance: FLUX.1-dev is guidance-distilled. The guidance scale enters the transformer as an embedding (one call
  per step), never as a conditional / unconditional pair; vgpo's ``guidance_scale`` is that embedded value (the
  pipeline's default 3.5).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
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

DOWNLOAD_HINT = (
    "`huggingface-cli download black-forest-labs/FLUX.1-dev --local-dir /data/flux.1-dev`, after accepting its "
    "licence on the hub"
)
DEFAULT_GUIDANCE = 3.5
"""FluxPipeline's default embedded guidance (what FLUX.1-dev was distilled around)."""


DEFAULTS = AdapterDefaults(
    lora_alpha_per_rank=2.0, lora_targets=LORA_TARGETS, lora_init="gaussian", decode_batch_size=8
)
"""Flow-GRPO's FLUX LoRA: rank 32, alpha 64 on the attention projections (the single-stream blocks have to_q, to_k,
to_v; the double-stream ones all eight)."""


@dataclasses.dataclass
class FluxOptions:
    """``model.options`` of ``model.kind=flux``."""

    resolution: int = 512
    """Image side in pixels (a multiple of 16: VAE downsampling 8 x the 2 x 2 packing)."""
    max_sequence_length: int = 512
    """T5 tokens per prompt (FluxPipeline's default, 512)."""


class FluxAdapter(TransformerAdapter):
    """The model-specific part of FLUX.1 (:class:`vgpo.models.base.FlowModelAdapter`). Conditioning keys (one row
    per prompt): ``prompt_embeds`` [B, L, D] (T5) and ``pooled`` [B, P] (CLIP)."""

    kind = "flux"

    guidance: Guidance = "embedded"
    state_prefix = ""
    lora_export: LoraExport | None = LoraExport("FluxPipeline")

    def __init__(self, pipeline: Any, *, base_model: str, options: FluxOptions) -> None:
        """Wrap an already-loaded ``FluxPipeline`` (on its final device and dtype); freezes its VAE and encoders."""
        self.pipeline = pipeline
        self.transformer = pipeline.transformer
        self.vae = pipeline.vae
        self.base_model = base_model
        self.max_sequence_length = options.max_sequence_length
        self.vae_scale_factor = int(pipeline.vae_scale_factor)
        if options.resolution % (self.vae_scale_factor * 2) != 0:
            raise ConfigError(
                f"model.options.resolution {options.resolution} must be a multiple of {self.vae_scale_factor * 2} "
                f"(VAE downsampling {self.vae_scale_factor} x the 2 x 2 latent packing)"
            )
        self.resolution = options.resolution
        # a private scheduler copy: sigma_schedule() calls set_timesteps, which mutates scheduler state
        self.scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config)
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        freeze(self.vae, pipeline.text_encoder, pipeline.text_encoder_2)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """(C, H, W) of the unpacked latent: C = in_channels / 4 (the transformer sees 2 x 2 patches)."""
        side = 2 * (self.resolution // (self.vae_scale_factor * 2))
        return (int(self.transformer.config.in_channels) // 4, side, side)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """T5 token embeddings and the CLIP pooled embedding of B prompts, through the pipeline's ``encode_prompt``."""
        prompt_embeds, pooled, _ = self.pipeline.encode_prompt(
            prompt=list(prompts), prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length
        )
        return {"prompt_embeds": prompt_embeds.to(self.dtype), "pooled": pooled.to(self.dtype)}

    def negative(self, cond: Conditioning) -> Conditioning:
        raise ConfigError("FLUX.1 is guidance-distilled: it has no classifier-free guidance pair")

    def predict_velocity(
        self, denoiser: nn.Module, latents: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, guidance_scale: float
    ) -> torch.Tensor:
        """v = noise - data [N, C, H, W] from unpacked latents [N, C, H, W] at sigma [N]: one call on the packed
        latents, ``guidance_scale`` as the distilled guidance embedding (a transformer without the embedding, e.g.
        FLUX.1-schnell, takes only 1.0)."""
        n, _, height, width = latents.shape
        packed = pack_latents(latents.to(self.device, self.dtype))  # [N, H/2 * W/2, 4C]
        # the pipeline's timestep: scheduler.timesteps (sigma * 1000, float32) in the latents' dtype, / 1000
        timestep = (sigma.to(self.device, torch.float32) * self.num_train_timesteps).to(self.dtype) / 1000
        guidance: torch.Tensor | None = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((n,), guidance_scale, device=self.device, dtype=torch.float32)
        elif guidance_scale != 1.0:
            raise ConfigError(
                f"this FLUX transformer has no guidance embedding (e.g. FLUX.1-schnell): sampling.guidance_scale must "
                f"be 1.0, got {guidance_scale}"
            )
        prompt_embeds = cond["prompt_embeds"].to(self.device, self.dtype)
        output = denoiser(
            hidden_states=packed,
            timestep=timestep,
            guidance=guidance,
            pooled_projections=cond["pooled"].to(self.device, self.dtype),
            encoder_hidden_states=prompt_embeds,
            txt_ids=torch.zeros(prompt_embeds.shape[1], 3, device=self.device, dtype=self.dtype),
            img_ids=latent_image_ids(height // 2, width // 2, self.device, self.dtype),
            return_dict=False,
        )[0]
        return unpack_latents(output, height, width)  # [N, C, H, W]

    def combine_guidance(self, v_uncond: torch.Tensor, v_cond: torch.Tensor, scale: float) -> torch.Tensor:
        return cfg_combine(v_uncond, v_cond, scale)  # unused: guidance is embedded

    def sigma_schedule(self, num_steps: int) -> torch.Tensor:
        """T + 1 sigmas float32 on CPU, 1 to 0: ``linspace(1, 1/T, T)`` through the scheduler with the dynamic shift
        mu of this resolution's token count, as ``FluxPipeline.__call__`` computes it."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        _, height, width = self.latent_shape
        config = self.scheduler.config
        mu = calculate_shift(
            (height // 2) * (width // 2),
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        if config.get("use_flow_sigmas", False):
            self.scheduler.set_timesteps(num_steps, device="cpu", mu=mu)
        else:
            self.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), device="cpu", mu=mu)
        return self.scheduler.sigmas.detach().to("cpu", torch.float32).clone()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images [n, 3, H_img, W_img] float32 in [0, 1] from unpacked latents (the VAE's scaling and shift)."""
        config = self.vae.config
        scaled = latents.to(self.device, self.vae.dtype) / config.scaling_factor + config.shift_factor
        decoded = self.vae.decode(scaled, return_dict=False)[0]
        return (decoded.float() / 2 + 0.5).clamp(0, 1)

    def blocks(self, denoiser: nn.Module) -> list[nn.Module]:
        """Each double-stream block, then each single-stream block."""
        return [*denoiser.transformer_blocks, *denoiser.single_transformer_blocks]  # type: ignore[misc]


FLUX = DiffusersFamily(
    "flux",
    "FluxPipeline",
    FluxAdapter,
    FluxOptions,
    DEFAULTS,
    folder="a local FLUX.1 pipeline folder (e.g. /data/flux.1-dev)",
    download_hint=DOWNLOAD_HINT,
)
"""How ``model.kind=flux`` and :func:`load_flux_policy` load a pipeline folder."""

FluxPolicy = AdapterPolicy[FluxAdapter]
"""The type of a FLUX policy (build one with :func:`load_flux_policy` or ``model.kind=flux``)."""


@register_model("flux", options=FluxOptions, defaults=DEFAULTS)
def load_flux(request: LoadRequest, options: FluxOptions) -> FluxAdapter:
    """``model.kind=flux``: a FLUX.1 pipeline folder named by ``model.path`` (nothing is downloaded)."""
    return FLUX.load(request, options)


def load_flux_policy(
    path: str | os.PathLike[str],
    *,
    dtype: str = "bf16",
    device: str | torch.device | None = None,
    training: Training | None = None,
    **options: Any,
) -> AdapterPolicy[FluxAdapter]:
    """The policy of the FLUX.1 pipeline in ``path`` (``options`` as :class:`FluxOptions`; ``training`` LoRA rank 32
    by default)."""
    return FLUX.policy(path, dtype=dtype, device=device, training=training, options=options)


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, H/2 * W/2, 4C]: 2 x 2 patches in row-major order (``FluxPipeline._pack_latents``)."""
    n, channels, height, width = latents.shape
    patches = latents.view(n, channels, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(n, (height // 2) * (width // 2), channels * 4)


def unpack_latents(packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents`: [N, H/2 * W/2, 4C] -> [N, C, H, W] (``FluxPipeline._unpack_latents``)."""
    n, _, features = packed.shape
    patches = packed.view(n, height // 2, width // 2, features // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(n, features // 4, height, width)


def latent_image_ids(rows: int, columns: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[rows * columns, 3] position ids (0, row, column) of the packed patches
    (``FluxPipeline._prepare_latent_image_ids``)."""
    ids = torch.zeros(rows, columns, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(rows)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(columns)[None, :]
    return ids.reshape(rows * columns, 3).to(device=device, dtype=dtype)
