"""Qwen-Image as a :class:`vgpo.policy.FlowPolicy`, through diffusers' ``QwenImagePipeline`` (diffusers 0.42,
``pipelines/qwenimage/pipeline_qwenimage.py``).

What is Qwen-Image-specific, each as the stock pipeline does it:
- the text encoder: Qwen2.5-VL's last hidden state over a chat template (its first 34 tokens, the system prompt,
  dropped), with a mask; vgpo pads every prompt's embeddings to ``max_sequence_length`` tokens (mask 0 on the
  padding) so that rows of any batches, and a prompt with its negative, stack into one call;
- the latents: vgpo keeps them unpacked, [N, C, H, W] (C = 16 for the real VAE); the transformer takes them packed
  into 2 x 2 patches, [N, H/2 * W/2, 4C], with ``img_shapes`` (1, H/2, W/2); the VAE is a video VAE fed one frame;
- the time: timestep = sigma (the scheduler's ``sigma * 1000`` / 1000); the transformer predicts noise - data;
- the schedule: ``linspace(1, 1/T, T)``, shifted by the scheduler with mu linear in the token count
  (``calculate_shift``) and, in the released config, stretched so that the last non-zero sigma is 0.02;
- true CFG with a norm rescale: v = u + s (c - u), then rescaled token by token to the conditional prediction's norm,
  ``v * |c| / |v|`` (norms over each packed token's 4C features), as the pipeline's ``true_cfg_scale`` does.
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
from vgpo.models.base import AdapterDefaults, AdapterPolicy, Guidance, LoraExport, Training
from vgpo.models.diffusers_loading import DiffusersFamily, TransformerAdapter, freeze
from vgpo.models.flux import pack_latents, unpack_latents
from vgpo.models.lora import LORA_TARGETS
from vgpo.policy import Conditioning

DOWNLOAD_HINT = "`huggingface-cli download Qwen/Qwen-Image --local-dir /data/qwen-image`"
DEFAULTS = AdapterDefaults(
    lora_alpha_per_rank=2.0, lora_targets=LORA_TARGETS, lora_init="gaussian", decode_batch_size=8
)
"""LoRA rank 32, alpha 64 on the eight attention projections of every dual-stream block."""


@dataclasses.dataclass
class QwenImageOptions:
    """``model.options`` of ``model.kind=qwen_image``."""

    resolution: int = 512
    """Image side in pixels (a multiple of 16: VAE downsampling 8 x the 2 x 2 packing)."""
    negative_prompt: str = " "
    """Prompt of the unconditional branch of true CFG (Qwen-Image's examples use a single space)."""
    max_sequence_length: int = 512
    """Text tokens per prompt (after the template's system prompt); every prompt is padded to this many."""


class QwenImageAdapter(TransformerAdapter):
    """The model-specific part of Qwen-Image (:class:`vgpo.models.base.FlowModelAdapter`). Conditioning keys (one
    row per prompt): ``prompt_embeds`` [B, L, D] and ``prompt_mask`` [B, L] (1 on real tokens), and the same for the
    negative prompt (``negative_prompt_embeds``, ``negative_prompt_mask``), L = ``max_sequence_length``."""

    kind = "qwen_image"

    guidance: Guidance = "cfg"
    state_prefix = ""
    lora_export: LoraExport | None = LoraExport("QwenImagePipeline")

    def __init__(self, pipeline: Any, *, base_model: str, options: QwenImageOptions) -> None:
        """Wrap an already-loaded ``QwenImagePipeline`` (on its final device and dtype); freezes its VAE and text
        encoder."""
        self.pipeline = pipeline
        self.transformer = pipeline.transformer
        self.vae = pipeline.vae
        self.base_model = base_model
        self.negative_prompt = options.negative_prompt
        self.max_sequence_length = options.max_sequence_length
        self.vae_scale_factor = int(pipeline.vae_scale_factor)
        if options.resolution % (self.vae_scale_factor * 2) != 0:
            raise ConfigError(
                f"model.options.resolution {options.resolution} must be a multiple of {self.vae_scale_factor * 2} "
                f"(VAE downsampling {self.vae_scale_factor} x the 2 x 2 latent packing)"
            )
        self.resolution = options.resolution
        self.scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config)
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        freeze(self.vae, pipeline.text_encoder)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """(C, H, W) of the unpacked latent: C = in_channels / 4 (the transformer sees 2 x 2 patches)."""
        side = 2 * (self.resolution // (self.vae_scale_factor * 2))
        return (int(self.transformer.config.in_channels) // 4, side, side)

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings [B, L, D] and mask [B, L] (long), padded with zeros to L = ``max_sequence_length``."""
        embeds, mask = self.pipeline.encode_prompt(
            prompt=prompts, device=self.device, max_sequence_length=self.max_sequence_length
        )
        rows, length, _ = embeds.shape
        if mask is None:  # the pipeline drops an all-ones mask
            mask = torch.ones(rows, length, dtype=torch.long, device=embeds.device)
        pad = self.max_sequence_length - length
        embeds = torch.nn.functional.pad(embeds, (0, 0, 0, pad))  # [B, L, D]
        mask = torch.nn.functional.pad(mask.long(), (0, pad))  # [B, L]
        return embeds.to(self.dtype), mask

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Qwen2.5-VL embeddings of B prompts and of the negative prompt, through the pipeline's ``encode_prompt``."""
        prompts = list(prompts)
        embeds, mask = self._encode(prompts)
        negative_embeds, negative_mask = self._encode([self.negative_prompt] * len(prompts))
        return {
            "prompt_embeds": embeds,
            "prompt_mask": mask,
            "negative_prompt_embeds": negative_embeds,
            "negative_prompt_mask": negative_mask,
        }

    def negative(self, cond: Conditioning) -> Conditioning:
        return {"prompt_embeds": cond["negative_prompt_embeds"], "prompt_mask": cond["negative_prompt_mask"]}

    def predict_velocity(
        self, denoiser: nn.Module, latents: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, guidance_scale: float
    ) -> torch.Tensor:
        """v = noise - data [N, C, H, W] from unpacked latents [N, C, H, W] at sigma [N] (one call, packed)."""
        n, _, height, width = latents.shape
        packed = pack_latents(latents.to(self.device, self.dtype))  # [N, H/2 * W/2, 4C]
        timestep = (sigma.to(self.device, torch.float32) * self.num_train_timesteps).to(self.dtype) / 1000
        mask = cond["prompt_mask"].to(self.device)
        output = denoiser(
            hidden_states=packed,
            timestep=timestep,
            guidance=None,
            encoder_hidden_states_mask=None if bool(mask.all()) else mask,  # as the pipeline: no mask when all ones
            encoder_hidden_states=cond["prompt_embeds"].to(self.device, self.dtype),
            img_shapes=[[(1, height // 2, width // 2)]] * n,
            return_dict=False,
        )[0]
        return unpack_latents(output, height, width)

    def combine_guidance(self, v_uncond: torch.Tensor, v_cond: torch.Tensor, scale: float) -> torch.Tensor:
        """True CFG with Qwen-Image's rescale: v = u + s (c - u), then each packed token's 4C-vector rescaled to the
        norm of the conditional one (``QwenImagePipeline.__call__``)."""
        height, width = v_cond.shape[-2:]
        uncond, conditional = pack_latents(v_uncond), pack_latents(v_cond)  # [N, tokens, 4C]
        combined = uncond + scale * (conditional - uncond)
        conditional_norm = torch.norm(conditional, dim=-1, keepdim=True)
        combined_norm = torch.norm(combined, dim=-1, keepdim=True)
        return unpack_latents(combined * (conditional_norm / combined_norm), height, width)

    def sigma_schedule(self, num_steps: int) -> torch.Tensor:
        """T + 1 sigmas float32 on CPU, 1 to 0: ``linspace(1, 1/T, T)`` through the scheduler with mu of this
        resolution's token count (and its terminal stretch), as ``QwenImagePipeline.__call__`` computes it."""
        from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

        _, height, width = self.latent_shape
        config = self.scheduler.config
        mu = calculate_shift(
            (height // 2) * (width // 2),
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        self.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), device="cpu", mu=mu)
        return self.scheduler.sigmas.detach().to("cpu", torch.float32).clone()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images [n, 3, H, W] float32 in [0, 1]: latents / (1 / std) + mean per channel, the VAE on one frame."""
        config = self.vae.config
        frames = latents.to(self.device, self.vae.dtype).unsqueeze(2)  # [n, C, 1, H, W]
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean).view(shape).to(frames.device, frames.dtype)
        inverse_std = 1.0 / torch.tensor(config.latents_std).view(shape).to(frames.device, frames.dtype)
        decoded = self.vae.decode(frames / inverse_std + mean, return_dict=False)[0][:, :, 0]
        return (decoded.float() / 2 + 0.5).clamp(0, 1)

    def blocks(self, denoiser: nn.Module) -> list[nn.Module]:
        return list(denoiser.transformer_blocks)  # type: ignore[arg-type]


QWEN_IMAGE = DiffusersFamily(
    "qwen_image",
    "QwenImagePipeline",
    QwenImageAdapter,
    QwenImageOptions,
    DEFAULTS,
    folder="a local Qwen-Image pipeline folder",
    download_hint=DOWNLOAD_HINT,
)
"""How ``model.kind=qwen_image`` and :func:`load_qwen_image_policy` load a pipeline folder."""

QwenImagePolicy = AdapterPolicy[QwenImageAdapter]
"""The type of a Qwen-Image policy (build one with :func:`load_qwen_image_policy` or ``model.kind=qwen_image``)."""


@register_model("qwen_image", options=QwenImageOptions, defaults=DEFAULTS)
def load_qwen_image(request: LoadRequest, options: QwenImageOptions) -> QwenImageAdapter:
    """``model.kind=qwen_image``: a Qwen-Image pipeline folder named by ``model.path`` (nothing is downloaded)."""
    return QWEN_IMAGE.load(request, options)


def load_qwen_image_policy(
    path: str | os.PathLike[str],
    *,
    dtype: str = "bf16",
    device: str | torch.device | None = None,
    training: Training | None = None,
    **options: Any,
) -> AdapterPolicy[QwenImageAdapter]:
    """The policy of the Qwen-Image pipeline in ``path`` (``options`` as :class:`QwenImageOptions`; ``training``
    LoRA rank 32 by default)."""
    return QWEN_IMAGE.policy(path, dtype=dtype, device=device, training=training, options=options)
