"""What the diffusers adapters of FLUX.1, Qwen-Image and Wan share: loading a pipeline folder without ever
downloading, the trained transformer (LoRA or full fine-tuning) with its frozen reference, trainable state dicts,
FSDP shard units, the fingerprint, and exporting LoRA in the format the stock pipeline's ``load_lora_weights`` reads.

An adapter holds one :class:`TrainedTransformer` (composition, not inheritance) and adds only what is specific to
its model: prompt encoding, the velocity call, the sigma schedule and decoding.
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
from vgpo.models.lora import adapters_disabled, add_lora, lora_parameters

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def load_pipeline(
    pipeline_class: Any,
    path_or_hub_id: str | os.PathLike[str],
    *,
    dtype: str,
    device: str | torch.device | None,
    download_hint: str,
) -> Any:
    """``pipeline_class.from_pretrained`` from a local folder, or a hub id already in the Hugging Face cache
    (``local_files_only``: nothing is ever downloaded). Raises :class:`CheckpointError` naming the folder and the
    fix (``download_hint``: the command that fetches the weights once, on a machine with internet access)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    name = os.fspath(path_or_hub_id)
    local = Path(name).expanduser()
    if not local.exists() and not looks_like_hub_id(name):
        raise CheckpointError(missing_weights_message(pipeline_class, name, "no such folder", download_hint))
    try:
        pipeline = pipeline_class.from_pretrained(
            str(local) if local.exists() else name, dtype=DTYPES[dtype], local_files_only=True
        )
    except (OSError, ValueError) as error:  # hub and missing-file errors are OSError / ValueError subclasses
        cause = f"{type(error).__name__}: {error}"
        raise CheckpointError(missing_weights_message(pipeline_class, name, cause, download_hint)) from error
    pipeline.to(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def looks_like_hub_id(name: str) -> bool:
    """``owner/name``: one slash, no leading path markers (anything else is a local path)."""
    return name.count("/") == 1 and not name.startswith(("/", ".", "~")) and "\\" not in name


def missing_weights_message(pipeline_class: Any, name: str, cause: str, download_hint: str) -> str:
    return (
        f"cannot load {pipeline_class.__name__} weights from {name!r} ({cause}). vgpo never downloads weights: "
        f"download them once on a machine with internet access ({download_hint}) and set model.path to that "
        "folder; or, with the weights already in the Hugging Face cache, pass the hub id."
    )


def freeze(*modules: torch.nn.Module | None) -> None:
    """Frozen, in eval mode: the VAE and text encoders, used outside the update."""
    for module in modules:
        if module is not None:
            module.requires_grad_(False)
            module.eval()


class TrainedTransformer:
    """The transformer RL trains, with LoRA (``lora_rank``) or in full (``lora_rank=None``: the reference is then a
    frozen copy of the initial weights), and the frozen reference the KL term compares against.

    ``block_lists`` names the transformer's attributes holding its blocks (``transformer_blocks``,
    ``single_transformer_blocks``, ``blocks``): the FSDP shard units are every block of each, then the model.
    """

    def __init__(
        self,
        transformer: torch.nn.Module,
        *,
        kind: str,
        base_model: str,
        lora_rank: int | None,
        lora_alpha: float,
        lora_targets: Sequence[str],
        gradient_checkpointing: bool,
        block_lists: Sequence[str],
    ) -> None:
        self.module = transformer
        self.kind = kind
        self.base_model = base_model
        self.lora_rank = lora_rank
        self.lora_alpha = float(lora_alpha)
        self.lora_targets = tuple(lora_targets)
        self.block_lists = tuple(block_lists)
        self.reference_module: torch.nn.Module | None = None
        if lora_rank is None:
            transformer.requires_grad_(True)
            self.reference_module = copy.deepcopy(transformer).requires_grad_(False).eval()
        else:
            add_lora(transformer, targets=self.lora_targets, rank=lora_rank, alpha=self.lora_alpha)
        if gradient_checkpointing:
            transformer.enable_gradient_checkpointing()  # type: ignore[operator]
        transformer.eval()  # no dropout during rollouts or in the re-scored log-probs
        self.active: torch.nn.Module = transformer
        """The module a velocity call runs: the trained transformer, or its full copy inside :meth:`reference`."""

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        if self.lora_rank is None:
            yield from self.module.parameters()
        else:
            yield from lora_parameters(self.module)

    def named_trainable(self) -> dict[str, torch.nn.Parameter]:
        named = dict(self.module.named_parameters())
        if self.lora_rank is None:
            return named
        return {name: parameter for name, parameter in named.items() if ".lora_" in name}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return named_state(self.named_trainable())

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_named_parameters(self.named_trainable(), state, f"this {self.kind} policy ({self.fingerprint()})")

    def shard_units(self) -> list[torch.nn.Module]:
        """Every block, then the transformer, of the trained transformer and of its frozen full copy (if any)."""
        models = [self.module] if self.reference_module is None else [self.module, self.reference_module]
        units: list[torch.nn.Module] = []
        for model in models:
            for attribute in self.block_lists:
                units.extend(getattr(model, attribute))
            units.append(model)
        return units

    def reference(self) -> AbstractContextManager[None]:
        """The frozen reference policy: LoRA disabled, or the initial full weights."""
        if self.reference_module is None:
            return adapters_disabled(self.module)
        return self._use(self.reference_module)

    @contextmanager
    def _use(self, module: torch.nn.Module) -> Iterator[None]:
        previous, self.active = self.active, module
        try:
            yield
        finally:
            self.active = previous

    def fingerprint(self) -> str:
        """``<kind>:<base name>:<transformer config hash>:<lora r/alpha/targets | full>``."""
        config_items = self.module.config.items()  # type: ignore[operator]
        config = {key: value for key, value in config_items if not key.startswith("_")}
        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
        base = Path(self.base_model.rstrip("/")).name or self.base_model
        if self.lora_rank is None:
            layout = "full"
        else:
            layout = f"lora(r={self.lora_rank},alpha={self.lora_alpha:g},targets={','.join(self.lora_targets)})"
        return f"{self.kind}:{base}:{digest}:{layout}"

    def export_lora(self, pipeline_class: Any, folder: str | os.PathLike[str]) -> Path:
        """Write the LoRA with ``pipeline_class.save_lora_weights``: the stock pipeline's ``load_lora_weights(folder)``
        then reproduces the trained policy (rank and alpha travel as metadata)."""
        from peft.utils import get_peft_model_state_dict

        if self.lora_rank is None:
            raise ValueError("export_lora needs a LoRA policy; a full fine-tune is saved with the pipeline itself")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = get_peft_model_state_dict(self.module)
        layers = {key: value.detach().cpu().contiguous() for key, value in state.items()}
        pipeline_class.save_lora_weights(
            folder,
            transformer_lora_layers=layers,
            transformer_lora_adapter_metadata=self.module.peft_config["default"].to_dict(),  # type: ignore[index,operator]
            safe_serialization=True,
        )
        return folder
