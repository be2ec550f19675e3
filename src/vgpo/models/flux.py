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

import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vgpo.models.diffusers_plumbing import TrainedTransformer, freeze, load_pipeline
from vgpo.models.lora import LORA_TARGETS
from vgpo.policy import Conditioning

DOWNLOAD_HINT = (
    "`huggingface-cli download black-forest-labs/FLUX.1-dev --local-dir /data/flux.1-dev`, after accepting its "
    "licence on the hub"
)
DEFAULT_GUIDANCE = 3.5
"""FluxPipeline's default embedded guidance (what FLUX.1-dev was distilled around)."""


class FluxPolicy:
    """A ``FluxPipeline``'s transformer as the RL policy; build it with :meth:`from_pretrained`.

    Conditioning keys (one row per prompt): ``prompt_embeds`` [B, L, D] (T5) and ``pooled`` [B, P] (CLIP).
    """

    def __init__(
        self,
        pipeline: Any,
        *,
        base_model: str,
        lora_rank: int | None = 32,
        lora_alpha: float = 64.0,
        lora_targets: Sequence[str] = LORA_TARGETS,
        gradient_checkpointing: bool = True,
        resolution: int = 512,
        max_sequence_length: int = 512,
        decode_batch_size: int = 8,
    ) -> None:
        self.pipeline = pipeline
        self.vae = pipeline.vae
        self.max_sequence_length = max_sequence_length
        self.decode_batch_size = decode_batch_size
        self.vae_scale_factor = int(pipeline.vae_scale_factor)
        if resolution % (self.vae_scale_factor * 2) != 0:
            raise ValueError(
                f"resolution {resolution} must be a multiple of {self.vae_scale_factor * 2} "
                f"(VAE downsampling {self.vae_scale_factor} x the 2 x 2 latent packing)"
            )
        self.resolution = resolution
        self.scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config)
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        freeze(self.vae, pipeline.text_encoder, pipeline.text_encoder_2)
        self.trained = TrainedTransformer(
            pipeline.transformer,
            kind="flux",
            base_model=base_model,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            lora_targets=lora_targets,
            gradient_checkpointing=gradient_checkpointing,
            block_lists=("transformer_blocks", "single_transformer_blocks"),
        )
        self.transformer = pipeline.transformer
        self.lora_rank = lora_rank

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | os.PathLike[str],
        *,
        lora_rank: int | None = 32,
        lora_alpha: float = 64.0,
        lora_targets: Sequence[str] = LORA_TARGETS,
        dtype: str = "bf16",
        device: str | torch.device | None = None,
        gradient_checkpointing: bool = True,
        resolution: int = 512,
        max_sequence_length: int = 512,
        decode_batch_size: int = 8,
    ) -> FluxPolicy:
        """Load a FLUX.1 pipeline folder; ``lora_rank=None`` is full fine-tuning. :class:`CheckpointError`
        (naming the fix) when the folder is missing; nothing is downloaded."""
        from diffusers import FluxPipeline

        pipeline = load_pipeline(FluxPipeline, path_or_hub_id, dtype=dtype, device=device, download_hint=DOWNLOAD_HINT)
        return cls(
            pipeline,
            base_model=os.fspath(path_or_hub_id),
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            lora_targets=lora_targets,
            gradient_checkpointing=gradient_checkpointing,
            resolution=resolution,
            max_sequence_length=max_sequence_length,
            decode_batch_size=decode_batch_size,
        )

    # ------------------------------------------------------------------ FlowPolicy
    @property
    def device(self) -> torch.device:
        return torch.device(self.transformer.device)

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @property
    def latent_shape(self) -> tuple[int, int, int]:
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

    def velocity(
        self, latents: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, guidance_scale: float = 1.0
    ) -> torch.Tensor:
        """v = noise - data [N, C, H, W] float32 from unpacked latents [N, C, H, W] at sigma [N]: one transformer
        call on the packed latents, ``guidance_scale`` as the distilled guidance embedding (FLUX.1-dev; a model
        without the embedding, e.g. schnell, takes only 1.0)."""
        n, channels, height, width = latents.shape
        packed = pack_latents(latents.to(self.device, self.dtype))  # [N, H/2 * W/2, 4C]
        # the pipeline's timestep: scheduler.timesteps (sigma * 1000, float32) in the latents' dtype, / 1000
        timestep = (sigma.to(self.device, torch.float32) * self.num_train_timesteps).to(self.dtype) / 1000
        if self.transformer.config.guidance_embeds:
            guidance: torch.Tensor | None = torch.full((n,), guidance_scale, device=self.device, dtype=torch.float32)
        elif guidance_scale != 1.0:
            raise ValueError(
                f"this FLUX transformer has no guidance embedding (e.g. FLUX.1-schnell), so guidance_scale must be "
                f"1.0, got {guidance_scale}; set sampling.guidance_scale: 1.0"
            )
        else:
            guidance = None
        prompt_embeds = cond["prompt_embeds"].to(self.device, self.dtype)
        text_ids = torch.zeros(prompt_embeds.shape[1], 3, device=self.device, dtype=self.dtype)
        image_ids = latent_image_ids(height // 2, width // 2, self.device, self.dtype)
        output = self.trained.active(
            hidden_states=packed,
            timestep=timestep,
            guidance=guidance,
            pooled_projections=cond["pooled"].to(self.device, self.dtype),
            encoder_hidden_states=prompt_embeds,
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0]
        return unpack_latents(output.float(), height, width)  # [N, C, H, W]

    def sigma_schedule(self, num_steps: int) -> torch.Tensor:
        """T + 1 sigmas float32 on CPU, 1 to 0: ``linspace(1, 1/T, T)`` through the scheduler with the dynamic shift
        mu of this resolution's token count, as ``FluxPipeline.__call__`` computes it."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        if num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {num_steps}")
        _, height, width = self.latent_shape
        config = self.scheduler.config
        mu = calculate_shift(
            (height // 2) * (width // 2),
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
        if config.get("use_flow_sigmas", False):
            self.scheduler.set_timesteps(num_steps, device="cpu", mu=mu)
        else:
            self.scheduler.set_timesteps(sigmas=sigmas, device="cpu", mu=mu)
        return self.scheduler.sigmas.detach().to("cpu", torch.float32).clone()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H_img, W_img] float32 in [0, 1] from unpacked latents, ``decode_batch_size`` at a time."""
        config = self.vae.config
        images = []
        for chunk in latents.split(self.decode_batch_size, dim=0):
            scaled = chunk.to(self.device, self.vae.dtype) / config.scaling_factor + config.shift_factor
            decoded = self.vae.decode(scaled, return_dict=False)[0]
            images.append((decoded.float() / 2 + 0.5).clamp(0, 1))
        return torch.cat(images, dim=0)

    def trainable_parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.trained.parameters()

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return self.trained.state_dict()

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.trained.load_state_dict(state)

    def shard_units(self) -> list[torch.nn.Module]:
        """Each double-stream block, each single-stream block, then the transformer (and the same of the frozen
        full copy when fine-tuning in full)."""
        return self.trained.shard_units()

    def reference(self) -> AbstractContextManager[None]:
        return self.trained.reference()

    def fingerprint(self) -> str:
        return self.trained.fingerprint()

    def export_lora(self, folder: str | os.PathLike[str]) -> Path:
        """LoRA for ``FluxPipeline.from_pretrained(base).load_lora_weights(folder)``."""
        from diffusers import FluxPipeline

        return self.trained.export_lora(FluxPipeline, folder)


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


def from_model_config(config: Any, device: torch.device) -> FluxPolicy:
    """The policy a :class:`vgpo.config.ModelConfig` describes (``model.kind: flux``)."""
    from vgpo.errors import ConfigError

    if config.path is None:
        raise ConfigError("model.kind=flux needs model.path: a local FLUX.1 pipeline folder (e.g. /data/flux.1-dev)")
    rank = config.lora_rank
    return FluxPolicy.from_pretrained(
        config.path,
        lora_rank=rank,
        lora_alpha=config.lora_alpha if config.lora_alpha is not None else float(rank or 1),
        dtype=config.dtype,
        device=device,
        gradient_checkpointing=config.gradient_checkpointing,
        resolution=config.resolution,
        max_sequence_length=config.max_sequence_length,
        decode_batch_size=config.decode_batch_size,
        **({} if config.lora_targets is None else {"lora_targets": config.lora_targets}),
    )
