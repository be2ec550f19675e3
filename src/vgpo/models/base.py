"""The adapter base: one :class:`AdapterPolicy` turns any :class:`FlowModelAdapter` into a
:class:`vgpo.policy.FlowPolicy`, owning everything the models share.

THE CONTRACT (what a model adapter supplies; everything else is the base's)
--------------------------------------------------------------------------
A model is a file ``vgpo/models/NAME.py`` that defines

1. an adapter object satisfying :class:`FlowModelAdapter` -- only the model-specific few:

   ``denoiser``                    the ``nn.Module`` RL trains (e.g. the pipeline's transformer). The base adds LoRA to
                                   it (or trains it whole), copies it for the frozen KL reference, shards it, and
                                   turns on its gradient checkpointing. Everything else the adapter holds (text
                                   encoders, VAE) the adapter freezes (``requires_grad_(False)``, ``eval()``) itself.
   ``device``, ``latent_shape``    where it computes; (C, H, W) of one latent (video: (C, F, H, W)).
   ``guidance``                    ``"cfg"``: the base runs classifier-free guidance as one batched call on
                                   [unconditional rows; conditional rows] and combines with
                                   :meth:`~FlowModelAdapter.combine_guidance`. ``"embedded"`` (guidance-distilled
                                   models, e.g. FLUX.1-dev): no CFG pair; the scale goes to the raw velocity call.
   ``encode_prompts(prompts)``     B prompts -> :data:`~vgpo.policy.Conditioning` with B rows (no caching: the
                                   base caches when ``model.prompt_cache`` > 0).
   ``negative(cond)``              the unconditional rows matching ``cond``'s N rows, with the keys the raw velocity
                                   reads (only called when ``guidance == "cfg"``).
   ``predict_velocity(denoiser, latents, sigma, cond, guidance_scale)``
                                   RAW v = x1 - x0 of one batch through ``denoiser`` (the base passes the trained
                                   module, or the frozen reference copy under :meth:`AdapterPolicy.reference`):
                                   latents [N, *latent_shape] float32, sigma [N] float32 in [0, 1] (vgpo's time
                                   convention: 1 is noise), cond with N rows. No CFG here; ``guidance_scale`` is
                                   1.0 for ``"cfg"`` adapters and the real scale for ``"embedded"`` ones. The
                                   adapter converts to its dtype, its timestep convention, packs/unpacks latents.
                                   Gradients must flow to the denoiser's parameters (the update calls it with grad
                                   on); any float dtype may come back (the base casts to float32).
   ``combine_guidance(v_uncond, v_cond, scale)``
                                   the CFG formula; standard models return :func:`cfg_combine`.
   ``sigma_schedule(num_steps)``   T + 1 sigmas, float32 on CPU, 1 -> 0, its shift (static or dynamic) included.
   ``decode(latents)``             images [n, 3, H, W] (video [n, F, 3, H, W]) float32 in [0, 1] of ONE chunk; the
                                   base splits into chunks of ``model.decode_batch_size`` and runs without grad.
   ``blocks(denoiser)``            the repeated blocks of ``denoiser`` (FSDP shard units; the base appends the
                                   module itself, for the trained module and for its reference copy).
   ``fingerprint(layout)``         a short name of base weights + :class:`TrainableLayout` (checkpoints check it).
   ``state_prefix``                prefix of the trainable state dict's keys ("" for SD3; "transformer." for tiny).
   ``lora_export``                 a :class:`LoraExport` naming the diffusers pipeline class whose
                                   ``save_lora_weights`` writes the file its ``load_lora_weights`` reads; or None.

   Members may be plain attributes or properties. An adapter never adds LoRA, copies its denoiser, or runs the
   CFG pair itself.

2. a loader ``load(request: vgpo.models.LoadRequest, options) -> adapter`` (``request.path``, a resolved
   ``request.device``, ``request.dtype`` "fp32" / "bf16" / "fp16"; a missing weights folder is a named
   :class:`~vgpo.errors.CheckpointError` with the fix, never a download), registered by name with
   :func:`vgpo.models.register_model` (``model.kind``) together with its typed options dataclass
   (``model.options``, checked by field name and type when the config loads) and its :class:`AdapterDefaults`;
3. one line in :data:`vgpo.models.MODEL_MODULES` (``"name": "vgpo.models.name"``), so the registry finds the file.

What the base owns: LoRA through peft (ONE path, :func:`vgpo.models.lora.add_lora`; targets checked with a named
error listing what exists; init ``model.lora_init``), full fine-tuning, the frozen reference, trainable state
dicts (load/save with named errors, also when sharded), FSDP shard units, the CFG pair, prompt-embedding caching,
decode batching, and LoRA export (:func:`export_lora`). docs/models.md has a worked example.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar, cast

import torch
from torch import nn

from vgpo.errors import ConfigError
from vgpo.models.common import load_named_parameters, named_state
from vgpo.models.lora import LORA_INITS, adapters_disabled, add_lora, lora_parameters
from vgpo.policy import Conditioning

Guidance = Literal["cfg", "embedded"]


@dataclasses.dataclass(frozen=True)
class TrainableLayout:
    """What RL trains: LoRA of ``rank`` (scale ``alpha / rank``) on ``targets`` with init ``init``, or every
    weight of the denoiser (``rank`` None)."""

    rank: int | None
    alpha: float
    targets: tuple[str, ...]
    init: str


@dataclasses.dataclass(frozen=True)
class LoraExport:
    """How a stock diffusers pipeline reads a LoRA: ``diffusers.<pipeline>.save_lora_weights(folder,
    <component>_lora_layers=..., <component>_lora_adapter_metadata=...)`` writes ``pytorch_lora_weights.safetensors``
    with keys ``<component>.<module>.lora_A.weight``, which ``<pipeline>.load_lora_weights(folder)`` loads."""

    pipeline: str
    """diffusers pipeline class name, e.g. "StableDiffusion3Pipeline"."""
    component: str = "transformer"
    """The pipeline component the denoiser is (the key prefix of the file)."""


class FlowModelAdapter(Protocol):
    """The model-specific few (see the module docstring for each member's exact contract)."""

    @property
    def denoiser(self) -> nn.Module: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def latent_shape(self) -> tuple[int, ...]: ...

    @property
    def guidance(self) -> Guidance: ...

    @property
    def state_prefix(self) -> str: ...

    @property
    def lora_export(self) -> LoraExport | None: ...

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning: ...

    def negative(self, cond: Conditioning) -> Conditioning: ...

    def predict_velocity(
        self,
        denoiser: nn.Module,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        cond: Conditioning,
        guidance_scale: float,
    ) -> torch.Tensor: ...

    def combine_guidance(self, v_uncond: torch.Tensor, v_cond: torch.Tensor, scale: float) -> torch.Tensor: ...

    def sigma_schedule(self, num_steps: int) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def blocks(self, denoiser: nn.Module) -> list[nn.Module]: ...

    def fingerprint(self, layout: TrainableLayout) -> str: ...


AdapterT = TypeVar("AdapterT", bound=FlowModelAdapter)


def cfg_combine(v_uncond: torch.Tensor, v_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): v = v_u + s (v_c - v_u), in float32."""
    return v_uncond + scale * (v_cond - v_uncond)


@dataclasses.dataclass(frozen=True)
class Training:
    """The base's settings (from the shared part of ``model`` in the config)."""

    lora_rank: int | None = None
    """LoRA rank; None: full fine-tuning of the denoiser."""
    lora_alpha: float | None = None
    """LoRA alpha (scale alpha / rank); None: the adapter's default multiple of the rank."""
    lora_targets: Sequence[str] | None = None
    """Sub-module names that get adapters; None: the adapter's default."""
    lora_init: str | None = None
    """peft's init of the adapters (see :data:`vgpo.models.lora.LORA_INITS`); None: the adapter's default."""
    gradient_checkpointing: bool = False
    """Recompute the denoiser's activations in the backward pass (needs ``enable_gradient_checkpointing``)."""
    decode_batch_size: int | None = None
    """Latents per decode call; None: the adapter's default."""
    prompt_cache: int = 0
    """Keep the conditioning of up to this many prompts (0: encode every time)."""


@dataclasses.dataclass(frozen=True)
class AdapterDefaults:
    """An adapter's defaults for the base's settings."""

    lora_alpha_per_rank: float = 1.0
    """alpha = this x rank when ``model.lora_alpha`` is unset (SD3 baseline: 2, alpha 64 at rank 32)."""
    lora_targets: tuple[str, ...] = ()
    """Default LoRA targets (module-name suffixes)."""
    lora_init: str = "gaussian"
    """Default LoRA init."""
    decode_batch_size: int = 8
    """Default latents per decode call."""


class AdapterPolicy(Generic[AdapterT]):
    """:class:`vgpo.policy.FlowPolicy` around any :class:`FlowModelAdapter` (``policy.adapter``); the trained module
    is ``policy.denoiser``."""

    def __init__(self, adapter: AdapterT, training: Training, defaults: AdapterDefaults | None = None) -> None:
        defaults = defaults or AdapterDefaults()
        self.adapter = adapter
        self.denoiser: nn.Module = adapter.denoiser
        rank = training.lora_rank
        if rank is not None and rank < 1:
            raise ConfigError(f"model.lora_rank must be >= 1 or null (full fine-tuning), got {rank}")
        alpha = training.lora_alpha if training.lora_alpha is not None else defaults.lora_alpha_per_rank * (rank or 0)
        self.layout = TrainableLayout(
            rank=rank,
            alpha=float(alpha),
            targets=tuple(training.lora_targets if training.lora_targets is not None else defaults.lora_targets),
            init=training.lora_init if training.lora_init is not None else defaults.lora_init,
        )
        self.decode_batch_size = training.decode_batch_size or defaults.decode_batch_size
        if self.decode_batch_size < 1:
            raise ConfigError(f"model.decode_batch_size must be >= 1, got {self.decode_batch_size}")
        self.prompt_cache = training.prompt_cache
        self._cache: dict[str, Conditioning] = {}
        self._reference: nn.Module | None = None
        if rank is None:
            self.denoiser.requires_grad_(True)
            self._reference = copy.deepcopy(self.denoiser).requires_grad_(False).eval()
        else:
            add_lora(
                self.denoiser,
                targets=self.layout.targets,
                rank=rank,
                alpha=self.layout.alpha,
                init=self.layout.init,
                every_target=training.lora_targets is not None,
            )
        if training.gradient_checkpointing:
            enable = getattr(self.denoiser, "enable_gradient_checkpointing", None)
            if not callable(enable):
                raise ConfigError(
                    f"model.gradient_checkpointing: {type(self.denoiser).__name__} has no enable_gradient_checkpointing;"
                    " set it to false"
                )
            enable()
        self.denoiser.eval()  # rollouts and updates alike run without dropout
        self._active: nn.Module = self.denoiser

    # ------------------------------------------------------------------ FlowPolicy: computation
    @property
    def device(self) -> torch.device:
        return self.adapter.device

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        # video adapters have 4 entries (C, F, H, W); FlowPolicy's annotation names the image case
        return cast(tuple[int, int, int], tuple(self.adapter.latent_shape))

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """The adapter's encoding of B prompts; with ``prompt_cache`` > 0 only prompts not seen before are encoded
        (in one call, in order), the rest come from the cache (the least recently used dropped first)."""
        prompts = list(prompts)
        if self.prompt_cache <= 0:
            return self.adapter.encode_prompts(prompts)
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            encoded = self.adapter.encode_prompts(missing)
            for row, prompt in enumerate(missing):
                self._cache[prompt] = {key: value[row : row + 1].clone() for key, value in encoded.items()}
        rows = [self._cache[p] for p in prompts]
        for prompt in dict.fromkeys(prompts):  # most recently used last
            self._cache[prompt] = self._cache.pop(prompt)
        while len(self._cache) > self.prompt_cache:
            self._cache.pop(next(iter(self._cache)))
        return {key: torch.cat([row[key] for row in rows], dim=0) for key in rows[0]}

    def velocity(
        self, latents: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, guidance_scale: float = 1.0
    ) -> torch.Tensor:
        """v [N, *latent_shape] float32; with CFG one batched call on [uncond rows; cond rows]."""
        rows = latents.shape[0]
        sigma = sigma.expand(rows)
        adapter = self.adapter
        if adapter.guidance == "embedded":
            return adapter.predict_velocity(self._active, latents, sigma, cond, guidance_scale).float()
        if guidance_scale == 1.0:
            return adapter.predict_velocity(self._active, latents, sigma, cond, 1.0).float()
        uncond = adapter.negative(cond)
        both = {key: torch.cat([uncond[key], cond[key]], dim=0) for key in uncond}  # 2N rows: uncond, then cond
        output = adapter.predict_velocity(
            self._active, torch.cat([latents, latents]), torch.cat([sigma, sigma]), both, 1.0
        ).float()
        return adapter.combine_guidance(output[:rows], output[rows:], guidance_scale)

    def sigma_schedule(self, num_steps: int) -> torch.Tensor:
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        return self.adapter.sigma_schedule(num_steps)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], decoded ``decode_batch_size`` latents at a time (bounded decoder memory)."""
        return torch.cat([self.adapter.decode(chunk) for chunk in latents.split(self.decode_batch_size)], dim=0)

    # ------------------------------------------------------------------ FlowPolicy: training plumbing
    @property
    def is_lora(self) -> bool:
        return self.layout.rank is not None

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        if self.is_lora:
            yield from lora_parameters(self.denoiser)
        else:
            yield from self.denoiser.parameters()

    def _named_trainable(self) -> dict[str, nn.Parameter]:
        prefix = self.adapter.state_prefix
        named = self.denoiser.named_parameters()
        return {prefix + name: p for name, p in named if not self.is_lora or ".lora_" in name}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return named_state(self._named_trainable())

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_named_parameters(self._named_trainable(), state, f"this policy ({self.fingerprint()})")

    def reference(self) -> AbstractContextManager[None]:
        """The frozen reference policy for the KL term: LoRA disabled, or the initial full weights."""
        if self._reference is None:
            return adapters_disabled(self.denoiser)
        return self._use(self._reference)

    @contextmanager
    def _use(self, denoiser: nn.Module) -> Iterator[None]:
        previous, self._active = self._active, denoiser
        try:
            yield
        finally:
            self._active = previous

    def shard_units(self) -> list[nn.Module]:
        """The adapter's blocks, then the denoiser, of the trained denoiser and of its frozen reference copy."""
        models = [self.denoiser] + ([self._reference] if self._reference is not None else [])
        return [unit for model in models for unit in (*self.adapter.blocks(model), model)]

    def fingerprint(self) -> str:
        return self.adapter.fingerprint(self.layout)


def export_lora(policy: AdapterPolicy[Any], folder: str | os.PathLike[str]) -> Path:
    """Write the policy's LoRA as ``folder/pytorch_lora_weights.safetensors`` in diffusers' format (the adapter's
    :class:`LoraExport`): ``<Pipeline>.from_pretrained(base).load_lora_weights(folder)`` then computes as the policy
    (rank, alpha and targets travel as the file's adapter metadata)."""
    import diffusers
    from peft.utils import get_peft_model_state_dict

    export = policy.adapter.lora_export
    if export is None:
        raise ConfigError(f"{policy.fingerprint()}: this model has no diffusers LoRA format to export to")
    if not policy.is_lora:
        raise ConfigError("export needs a LoRA policy; a full fine-tune is saved with the pipeline itself")
    pipeline = getattr(diffusers, export.pipeline, None)
    if pipeline is None:
        raise ConfigError(f"diffusers {diffusers.__version__} has no {export.pipeline}; upgrade diffusers")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    denoiser = policy.denoiser
    layers = {key: value.detach().cpu().contiguous() for key, value in get_peft_model_state_dict(denoiser).items()}
    peft_config: Any = getattr(denoiser, "peft_config")  # noqa: B009  # set by peft, unknown to the type checker
    pipeline.save_lora_weights(
        folder,
        **{
            f"{export.component}_lora_layers": layers,
            f"{export.component}_lora_adapter_metadata": peft_config["default"].to_dict(),
        },
        safe_serialization=True,
    )
    return folder


__all__ = [
    "LORA_INITS",
    "AdapterDefaults",
    "AdapterPolicy",
    "FlowModelAdapter",
    "LoraExport",
    "TrainableLayout",
    "Training",
    "cfg_combine",
    "export_lora",
]
