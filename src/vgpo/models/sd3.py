"""Stable Diffusion 3 / 3.5 (the paper's base model, SD3.5-Medium) as a :class:`vgpo.policy.FlowPolicy`.

Wraps the components of a diffusers ``StableDiffusion3Pipeline``: the MMDiT transformer (the policy, with
LoRA adapters through peft), the VAE (decoding latents for rewards) and the three text encoders (CLIP-L,
CLIP-G, T5-XXL; frozen, used once per prompt batch). Everything that depends on diffusers' conventions lives
here: the timestep the transformer expects (sigma * num_train_timesteps), the scheduler's shifted sigmas,
and the VAE's scaling and shift factors.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import torch

from vgpo.errors import CheckpointError
from vgpo.models.common import load_named_parameters, named_state
from vgpo.models.lora import LORA_TARGETS, adapters_disabled, add_lora, lora_parameters
from vgpo.policy import Conditioning

DEFAULT_LORA_TARGETS = LORA_TARGETS

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class SD3Policy:
    """An SD3 pipeline's transformer as the RL policy; build it with :meth:`from_pretrained`.

    Conditioning keys (each with one row per prompt): ``prompt_embeds`` [B, L, D] and ``pooled`` [B, P]
    for the prompt, ``negative_prompt_embeds`` and ``negative_pooled`` for the negative prompt that
    classifier-free guidance uses (the same negative repeated on every row, so rows can be selected freely).
    """

    def __init__(
        self,
        pipeline: Any,
        *,
        base_model: str,
        lora_rank: int | None = 32,
        lora_alpha: float = 64.0,
        lora_targets: Sequence[str] = DEFAULT_LORA_TARGETS,
        gradient_checkpointing: bool = True,
        resolution: int = 512,
        negative_prompt: str = "",
        max_sequence_length: int = 256,
        decode_batch_size: int = 8,
    ) -> None:
        """Wrap an already-loaded ``StableDiffusion3Pipeline`` (on its final device and dtype).

        ``lora_rank=None`` means full fine-tuning of the transformer (the reference policy is then a frozen
        copy of the initial transformer, which doubles its memory).
        """
        self.pipeline = pipeline
        self.transformer = pipeline.transformer
        self.vae = pipeline.vae
        self.base_model = base_model
        self.lora_rank = lora_rank
        self.lora_alpha = float(lora_alpha)
        self.lora_targets = tuple(lora_targets)
        self.negative_prompt = negative_prompt
        self.max_sequence_length = max_sequence_length
        self.decode_batch_size = decode_batch_size
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        patch = self.transformer.config.patch_size
        if resolution % (self.vae_scale_factor * patch) != 0:
            raise ValueError(
                f"resolution {resolution} must be a multiple of {self.vae_scale_factor * patch} "
                f"(VAE downsampling {self.vae_scale_factor} x patch size {patch})"
            )
        self.resolution = resolution
        # A private scheduler copy: sigma_schedule() calls set_timesteps, which mutates scheduler state.
        self.scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config)
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)

        for frozen in (self.vae, pipeline.text_encoder, pipeline.text_encoder_2, pipeline.text_encoder_3):
            if frozen is not None:
                frozen.requires_grad_(False)
                frozen.eval()
        self._reference_transformer: torch.nn.Module | None = None
        if lora_rank is None:
            self.transformer.requires_grad_(True)
            self._reference_transformer = copy.deepcopy(self.transformer).requires_grad_(False).eval()
        else:
            add_lora(self.transformer, targets=self.lora_targets, rank=lora_rank, alpha=self.lora_alpha)
        if gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        self.transformer.eval()  # no dropout in SD3; eval keeps any future dropout off during rollouts too
        self._active_transformer: torch.nn.Module = self.transformer

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | os.PathLike[str],
        *,
        lora_rank: int = 32,
        lora_alpha: float = 64.0,
        lora_targets: Sequence[str] = DEFAULT_LORA_TARGETS,
        full_finetune: bool = False,
        dtype: str = "bf16",
        device: str | torch.device | None = None,
        gradient_checkpointing: bool = True,
        resolution: int = 512,
        negative_prompt: str = "",
        max_sequence_length: int = 256,
        decode_batch_size: int = 8,
    ) -> SD3Policy:
        """Load an SD3 / SD3.5 pipeline folder (or hub id, e.g. ``stabilityai/stable-diffusion-3.5-medium``).

        ``dtype`` ("bf16", "fp16" or "fp32") applies to every component; LoRA weights stay float32.
        ``device`` defaults to CUDA when available, else CPU.
        Raises :class:`CheckpointError` when the weights cannot be found.
        """
        from diffusers import StableDiffusion3Pipeline

        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        name = os.fspath(path_or_hub_id)
        if not Path(name).expanduser().exists() and not _looks_like_hub_id(name):
            raise CheckpointError(_missing_weights_message(name, "no such folder"))
        try:
            pipeline = StableDiffusion3Pipeline.from_pretrained(
                str(Path(name).expanduser()) if Path(name).expanduser().exists() else name,
                dtype=DTYPES[dtype],
            )
        except (OSError, ValueError) as error:  # hub errors are OSError / ValueError subclasses
            raise CheckpointError(_missing_weights_message(name, f"{type(error).__name__}: {error}")) from error
        pipeline.to(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
        pipeline.set_progress_bar_config(disable=True)
        return cls(
            pipeline,
            base_model=name,
            lora_rank=None if full_finetune else lora_rank,
            lora_alpha=lora_alpha,
            lora_targets=lora_targets,
            gradient_checkpointing=gradient_checkpointing,
            resolution=resolution,
            negative_prompt=negative_prompt,
            max_sequence_length=max_sequence_length,
            decode_batch_size=decode_batch_size,
        )

    # ------------------------------------------------------------------ FlowPolicy
    @property
    def device(self) -> torch.device:
        return torch.device(self.transformer.device)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the transformer computes in (LoRA weights are float32 regardless)."""
        return self.transformer.dtype

    @property
    def latent_shape(self) -> tuple[int, int, int]:
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

    def velocity(
        self, latents: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, guidance_scale: float = 1.0
    ) -> torch.Tensor:
        """v = x1 - x0 [N, C, H, W] float32, from latents [N, C, H, W] at noise levels sigma [N].

        The transformer takes timestep = sigma * num_train_timesteps (what diffusers' SD3 pipeline passes:
        ``scheduler.timesteps``). With ``guidance_scale`` > 1: one batched call on [uncond rows; cond rows]
        and v = v_uncond + s * (v_cond - v_uncond), combined in float32.
        """
        guided = guidance_scale > 1.0
        hidden = latents.to(self.device, self.dtype)
        timestep = sigma.to(self.device, torch.float32) * self.num_train_timesteps
        prompt_embeds = cond["prompt_embeds"]
        pooled = cond["pooled"]
        if guided:
            hidden = torch.cat([hidden, hidden], dim=0)  # [2N, C, H, W]: uncond rows, then cond rows
            timestep = torch.cat([timestep, timestep], dim=0)
            prompt_embeds = torch.cat([cond["negative_prompt_embeds"], prompt_embeds], dim=0)
            pooled = torch.cat([cond["negative_pooled"], pooled], dim=0)
        output = self._active_transformer(
            hidden_states=hidden,
            timestep=timestep,
            encoder_hidden_states=prompt_embeds.to(self.device, self.dtype),
            pooled_projections=pooled.to(self.device, self.dtype),
            return_dict=False,
        )[0].float()
        if not guided:
            return output
        uncond, conditional = output.chunk(2, dim=0)
        return uncond + guidance_scale * (conditional - uncond)

    def sigma_schedule(self, num_steps: int) -> torch.Tensor:
        """T + 1 sigmas [T + 1] float32 on CPU, from 1 to 0, exactly the scheduler's (its shift included)."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {num_steps}")
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

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H_img, W_img] float32 in [0, 1], decoded ``decode_batch_size`` latents at a time."""
        config = self.vae.config
        images = []
        for chunk in latents.split(self.decode_batch_size, dim=0):
            scaled = chunk.to(self.device, self.vae.dtype) / config.scaling_factor + (config.shift_factor or 0.0)
            decoded = self.vae.decode(scaled, return_dict=False)[0]
            images.append((decoded.float() / 2 + 0.5).clamp(0, 1))
        return torch.cat(images, dim=0)

    def trainable_parameters(self) -> Iterator[torch.nn.Parameter]:
        if self.lora_rank is None:
            yield from self.transformer.parameters()
        else:
            yield from lora_parameters(self.transformer)

    def _named_trainable(self) -> dict[str, torch.nn.Parameter]:
        named = dict(self.transformer.named_parameters())
        if self.lora_rank is None:
            return named
        return {name: parameter for name, parameter in named.items() if ".lora_" in name}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return named_state(self._named_trainable())

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_named_parameters(self._named_trainable(), state, f"this SD3 policy ({self.fingerprint()})")

    def shard_units(self) -> list[torch.nn.Module]:
        """Each joint (MMDiT) block, then the transformer, of the trained transformer and of its frozen reference
        copy. The VAE and the text encoders (frozen, used outside the update) stay whole on every process."""
        transformers = [self.transformer]
        if self._reference_transformer is not None:
            transformers.append(self._reference_transformer)
        return [unit for model in transformers for unit in (*model.transformer_blocks, model)]

    def reference(self) -> AbstractContextManager[None]:
        """The frozen reference policy for the KL term: LoRA disabled, or the initial full weights."""
        if self._reference_transformer is None:
            return adapters_disabled(self.transformer)
        return self._use_transformer(self._reference_transformer)

    @contextmanager
    def _use_transformer(self, transformer: torch.nn.Module) -> Iterator[None]:
        previous, self._active_transformer = self._active_transformer, transformer
        try:
            yield
        finally:
            self._active_transformer = previous

    def fingerprint(self) -> str:
        """``sd3:<base name>:<transformer config hash>:<lora r/alpha/targets | full>``."""
        config = {key: value for key, value in self.transformer.config.items() if not key.startswith("_")}
        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
        base = Path(self.base_model.rstrip("/")).name or self.base_model
        if self.lora_rank is None:
            layout = "full"
        else:
            layout = f"lora(r={self.lora_rank},alpha={self.lora_alpha:g},targets={','.join(self.lora_targets)})"
        return f"sd3:{base}:{digest}:{layout}"


def export_lora(policy: SD3Policy, folder: str | os.PathLike[str]) -> Path:
    """Write the policy's LoRA in diffusers' format: ``StableDiffusion3Pipeline.from_pretrained(base)
    .load_lora_weights(folder)`` then reproduces the trained policy (rank and alpha travel as metadata)."""
    from diffusers import StableDiffusion3Pipeline
    from peft.utils import get_peft_model_state_dict

    if policy.lora_rank is None:
        raise ValueError("export_lora needs a LoRA policy; a full fine-tune is saved with the pipeline itself")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    transformer = policy.transformer
    layers = {key: value.detach().cpu().contiguous() for key, value in get_peft_model_state_dict(transformer).items()}
    StableDiffusion3Pipeline.save_lora_weights(
        folder,
        transformer_lora_layers=layers,
        transformer_lora_adapter_metadata=transformer.peft_config["default"].to_dict(),
        safe_serialization=True,
    )
    return folder


def _looks_like_hub_id(name: str) -> bool:
    """``owner/name``: one slash, no leading path markers (anything else is a local path)."""
    return name.count("/") == 1 and not name.startswith(("/", ".", "~")) and "\\" not in name


def _missing_weights_message(name: str, cause: str) -> str:
    return (
        f"cannot load SD3 weights from {name!r} ({cause}). Download SD3.5-Medium once to a folder on a machine "
        "with internet access (e.g. `huggingface-cli download stabilityai/stable-diffusion-3.5-medium "
        "--local-dir /data/sd3.5-medium`, after accepting its licence on the hub) and pass that folder; "
        "or, with the weights already in the Hugging Face cache, pass the hub id with HF_HUB_OFFLINE=1 set."
    )
