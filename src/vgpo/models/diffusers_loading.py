"""Loading helpers the diffusers adapters of SD3, FLUX.1, Qwen-Image and Wan share: a pipeline folder loaded without
ever downloading (a named error with the fix when it is missing), the two entry points of a pipeline family
(`DiffusersFamily`: ``model.kind=...`` and ``load_<kind>_policy``), frozen encoders, and the fingerprint. Everything
else they share (LoRA, reference, state dicts, shard units, CFG, export) is the adapter base's (`vgpo.models.base`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic

import torch
from torch import nn

from vgpo.errors import CheckpointError, ConfigError
from vgpo.models.base import AdapterDefaults, AdapterPolicy, AdapterT, TrainableLayout, Training

if TYPE_CHECKING:
    from vgpo.models import LoadRequest

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
        raise ConfigError(f"model.dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
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


class TransformerAdapter:
    """What every diffusers adapter shares: the pipeline's transformer is the denoiser, whose device and dtype the
    adapter computes in, and the fingerprint names the family (``kind``) and the base model. A subclass sets
    ``kind``, ``transformer`` and ``base_model`` and adds the model's own conventions (conditioning, timestep, latent
    layout, decoding)."""

    kind: ClassVar[str]
    transformer: Any
    base_model: str

    @property
    def denoiser(self) -> nn.Module:
        return self.transformer

    @property
    def device(self) -> torch.device:
        return torch.device(self.transformer.device)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the transformer computes in (LoRA weights are float32 regardless)."""
        return self.transformer.dtype

    def fingerprint(self, layout: TrainableLayout) -> str:
        """``<kind>:<base name>:<transformer config hash>:<lora r/alpha/targets | full>`` (checkpoints store it)."""
        return fingerprint(self.kind, self.base_model, self.transformer, layout)


@dataclasses.dataclass(frozen=True)
class DiffusersFamily(Generic[AdapterT]):
    """One diffusers pipeline family as vgpo loads it: the pipeline class, the adapter that wraps a loaded pipeline,
    its options and defaults, and what the errors tell a user who has no weights yet."""

    kind: str
    """``model.kind``."""
    pipeline: str
    """The diffusers pipeline class's name (imported on first load, so that ``import vgpo`` stays light)."""
    adapter: Callable[..., AdapterT]
    """``adapter(pipeline, base_model=..., options=...)``."""
    options: type
    """The dataclass of ``model.options``."""
    defaults: AdapterDefaults
    folder: str
    """What ``model.path`` must name, for the error when it is missing."""
    download_hint: str
    """The command that fetches the weights once, on a machine with internet access."""

    def load_pipeline(self, path: str | os.PathLike[str], dtype: str, device: str | torch.device | None) -> Any:
        pipeline_class = getattr(importlib.import_module("diffusers"), self.pipeline)
        return load_pipeline(pipeline_class, path, dtype=dtype, device=device, download_hint=self.download_hint)

    def load(self, request: LoadRequest, options: Any) -> AdapterT:
        """The ``model.kind`` loader: the adapter of the pipeline in ``model.path``."""
        if request.path is None:
            raise ConfigError(f"model.kind={self.kind} needs model.path: {self.folder}")
        pipeline = self.load_pipeline(request.path, request.dtype, request.device)
        return self.adapter(pipeline, base_model=request.path, options=options)

    def policy(
        self,
        path: str | os.PathLike[str],
        *,
        dtype: str,
        device: str | torch.device | None,
        training: Training | None,
        options: Mapping[str, Any],
    ) -> AdapterPolicy[AdapterT]:
        """The policy of the pipeline in ``path`` (``training`` None: LoRA rank 32, the field's usual rank)."""
        pipeline = self.load_pipeline(path, dtype, device)
        adapter = self.adapter(pipeline, base_model=os.fspath(path), options=self.options(**options))
        return AdapterPolicy(adapter, training or Training(lora_rank=32), self.defaults)


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


def fingerprint(kind: str, base_model: str, denoiser: torch.nn.Module, layout: TrainableLayout) -> str:
    """``<kind>:<base name>:<denoiser config hash>:<lora r/alpha/targets | full>`` (checkpoints store it)."""
    items: Any = denoiser.config
    config = {key: value for key, value in items.items() if not key.startswith("_")}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
    base = Path(base_model.rstrip("/")).name or base_model
    if layout.rank is None:
        trained = "full"
    else:
        trained = f"lora(r={layout.rank},alpha={layout.alpha:g},targets={','.join(layout.targets)})"
    return f"{kind}:{base}:{digest}:{trained}"
