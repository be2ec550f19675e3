"""LoRA through peft on any torch module: add adapters, list their weights, switch them off.

Shared by the model adapters. Works on diffusers models (which carry peft's adapter bookkeeping through
``add_adapter``) and on plain ``nn.Module`` s (through ``peft.inject_adapter_in_model``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer

from vgpo.errors import ConfigError

ADAPTER_NAME = "default"

LORA_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
)
"""The attention projections Flow-GRPO adapts (image and text streams of every joint block; REFERENCE.md)."""

LORA_INITS: dict[str, Literal["gaussian"] | bool] = {"gaussian": "gaussian", "kaiming": True}
"""``model.lora_init`` -> peft's ``init_lora_weights``. Both start the adapters as an exact no-op (B = 0); they
differ in A: "gaussian" draws A ~ N(0, 1 / rank) (SD3's default, as Flow-GRPO), "kaiming" is peft's default
kaiming-uniform A (the tiny model's default). Either draws A from torch's global generator."""


def add_lora(
    module: torch.nn.Module,
    *,
    targets: Sequence[str],
    rank: int,
    alpha: float,
    weights_dtype: torch.dtype = torch.float32,
    init: str = "gaussian",
    every_target: bool = True,
) -> LoraConfig:
    """Freeze ``module`` and add trainable LoRA adapters (rank ``rank``, scale ``alpha / rank``) on the
    sub-modules whose names end with one of ``targets``.

    The adapters start as an exact no-op (A random, B zero; ``init`` names how A is drawn, see
    :data:`LORA_INITS`), so the model's output is unchanged until training moves B. Their weights are kept in
    ``weights_dtype`` (float32 by default, whatever the base model's dtype): peft casts activations to the adapter's
    dtype, and float32 adapters keep small optimiser updates from vanishing in bf16 rounding.

    ``every_target``: each target must match some sub-module (targets a user named); else at least one must
    (a model's default list, e.g. ``to_add_out``, which a one-block MMDiT lacks). Either way a ConfigError
    lists the linear layers that exist.
    """
    if rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {rank}")
    if init not in LORA_INITS:
        raise ConfigError(f"model.lora_init must be one of {sorted(LORA_INITS)}, got {init!r}")
    names = [name for name, _ in module.named_modules()]
    unmatched = [t for t in targets if not any(name == t or name.endswith("." + t) for name in names)]
    if unmatched and (every_target or len(unmatched) == len(targets)):
        raise ConfigError(
            f"LoRA target(s) {unmatched} match no sub-module of {type(module).__name__}; fix model.lora_targets. "
            f"Its linear layers end with: {adaptable_names(module)}"
        )
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,  # type: ignore[arg-type]  # annotated int in peft; the scale alpha / r takes a float
        init_lora_weights=LORA_INITS[init],
        target_modules=list(targets),
    )
    module.requires_grad_(False)
    add_adapter = getattr(module, "add_adapter", None)
    if callable(add_adapter):
        add_adapter(config, adapter_name=ADAPTER_NAME)
    else:
        inject_adapter_in_model(config, module, adapter_name=ADAPTER_NAME)
    parameters = list(lora_parameters(module))
    if not parameters:
        raise ValueError(f"no sub-module of {type(module).__name__} matches the LoRA targets {list(targets)}")
    for parameter in parameters:
        parameter.data = parameter.data.to(weights_dtype)
        parameter.requires_grad_(True)
    return config


def adaptable_names(module: torch.nn.Module, limit: int = 40) -> list[str]:
    """The distinct name endings (after the first block index, e.g. "attn.to_q") of ``module``'s linear layers:
    what ``model.lora_targets`` can name."""
    endings = set()
    for name, layer in module.named_modules():
        if isinstance(layer, torch.nn.Linear) and name:
            parts = name.split(".")
            block = next((i for i, part in enumerate(parts) if part.isdigit()), -1)  # the first index: a block's
            endings.add(".".join(parts[block + 1 :]))
    return sorted(endings)[:limit]


def lora_parameters(module: torch.nn.Module) -> Iterator[torch.nn.Parameter]:
    """The LoRA adapter weights of ``module`` (the A and B matrices of every adapted layer)."""
    for name, parameter in module.named_parameters():
        if ".lora_" in name:
            yield parameter


@contextmanager
def adapters_disabled(module: torch.nn.Module) -> Iterator[None]:
    """Within the context ``module`` computes as its base model, every LoRA adapter bypassed."""
    layers = [layer for layer in module.modules() if isinstance(layer, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
