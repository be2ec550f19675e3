"""The one interface between vgpo and a flow model.

The sampler and the trainer only ever talk to a :class:`FlowPolicy`. The embedded tiny model
(`vgpo.models.tiny`) and SD3.5 through diffusers (`vgpo.models.sd3`) are two adapters of it; nothing
outside `vgpo.models` may branch on which one it holds.

Time convention (used everywhere in vgpo, stated once): sigma = 1 is pure noise, sigma = 0 is data,
and generation runs from sigma = 1 down to sigma = 0. A noisy sample is x_sigma = (1 - sigma) x0 + sigma x1
(paper Eq. 1) and the model predicts the velocity v = x1 - x0 (paper Eq. 2).

Shape legend (used across the package):
    B  prompts in a batch          G  samples per prompt (a group)       N = B * G samples
    T  sampling steps              C, H, W  latent channels, height, width
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

import torch

Conditioning = dict[str, torch.Tensor]
"""Encoded prompts: every tensor has one row per prompt as its leading dimension, so that
``select_rows`` can index and repeat them. What the keys are is the adapter's business (the tiny model
keeps token embeddings and a mask; SD3 keeps prompt and pooled embeddings, with their negatives for CFG)."""


def select_rows(cond: Conditioning, index: torch.Tensor) -> Conditioning:
    """Rows ``index`` [M] of every tensor in ``cond`` (e.g. ``repeat_interleave`` for groups)."""
    return {key: value.index_select(0, index.to(value.device)) for key, value in cond.items()}


def concat_rows(conds: Sequence[Conditioning]) -> Conditioning:
    """Stack several conditionings with the same keys along the prompt dimension."""
    keys = conds[0].keys()
    return {key: torch.cat([c[key] for c in conds], dim=0) for key in keys}


@runtime_checkable
class FlowPolicy(Protocol):
    """A text-to-image flow-matching model seen as an RL policy (paper Eq. 3)."""

    @property
    def device(self) -> torch.device:
        """Where the model's computation runs; latents and conditioning live here."""
        ...

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """(C, H, W) of one latent sample; (C, F, H, W) for video."""
        ...

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Encode B prompts once; the result has B rows (see :data:`Conditioning`)."""
        ...

    def velocity(
        self, latents: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, guidance_scale: float = 1.0
    ) -> torch.Tensor:
        """Predicted velocity v = x1 - x0 at noise level ``sigma``.

        latents [N, C, H, W]; sigma [N] in [0, 1]; ``cond`` has N rows. With ``guidance_scale`` > 1 the
        adapter applies classifier-free guidance (one batched call on conditional and unconditional rows).
        Returns [N, C, H, W]. Gradients flow to the trainable parameters when grad is enabled.
        """
        ...

    def sigma_schedule(self, num_steps: int) -> torch.Tensor:
        """The T + 1 noise levels of a T-step sampler, float32 on CPU, from 1.0 down to 0.0 (shift included)."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H_img, W_img], float32 in [0, 1], from latents [N, C, H, W] (no gradient)."""
        ...

    def trainable_parameters(self) -> Iterator[torch.nn.Parameter]:
        """The parameters RL updates (LoRA adapters, or every weight for full fine-tuning)."""
        ...

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable weights by name, for checkpoints (whole CPU tensors, safetensors-compatible). When they are
        sharded over processes (:meth:`shard_units`) every process must call it, and only rank 0 gets them."""
        ...

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`trainable_state_dict`; raises ValueError naming missing or unexpected keys."""
        ...

    def reference(self) -> AbstractContextManager[None]:
        """Context in which :meth:`velocity` is the frozen reference policy (for the KL term):
        LoRA adapters disabled, or the initial weights for full fine-tuning."""
        ...

    def shard_units(self) -> list[torch.nn.Module]:
        """The modules to shard over processes for full fine-tuning (FSDP2, `vgpo.parallel.sharding`), in wrapping order:
        each transformer block, then the model that holds them, for the trained model and its frozen reference
        copy. Their parameters must be on the device the process computes on."""
        ...

    def fingerprint(self) -> str:
        """A short string naming the base model and trainable layout; a checkpoint stores it so that loading
        one from another model fails with a clear error."""
        ...
