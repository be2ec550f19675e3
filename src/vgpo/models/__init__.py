"""Flow models, registered by name (``model.kind``) as rewards are.

Each model is one file with an adapter (the model-specific few, `vgpo.models.base.FlowModelAdapter`) and a loader
registered with :func:`register_model`; :func:`build_model` wraps the adapter in the one shared
:class:`vgpo.models.base.AdapterPolicy`. :data:`MODEL_MODULES` says which file registers each built-in name (imported
on first use, so that naming a model never imports the others). Adding a model: its file plus one line there
(docs/models.md).

This module imports nothing heavy: the config imports it to check ``model.kind`` and ``model.options``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vgpo.errors import ConfigError

if TYPE_CHECKING:
    from vgpo.config import ModelConfig
    from vgpo.models.base import AdapterDefaults, AdapterPolicy, FlowModelAdapter

MODEL_MODULES: dict[str, str] = {
    "tiny": "vgpo.models.tiny",
    "sd3": "vgpo.models.sd3",
    "flux": "vgpo.models.flux",
    "wan": "vgpo.models.wan",
    "qwen_image": "vgpo.models.qwen_image",
}
"""Built-in ``model.kind`` -> the module that registers it (one line per model)."""

LEGACY_OPTION_KEYS: dict[str, Any] = {"resolution": 512, "negative_prompt": "", "max_sequence_length": 256}
"""Keys that configs written before ``model.options`` existed hold at the top of ``model`` (SD3's options), with
the value they had by default. A set key becomes the option of that name when the model has one; a model
without it accepts only that old default (old saved configs of the tiny model wrote it)."""


@dataclasses.dataclass(frozen=True)
class ModelLoader:
    """A registered model: ``load(request, options) -> adapter``, the type of its options, its defaults."""

    name: str
    load: Callable[[LoadRequest, Any], FlowModelAdapter]
    options: type
    defaults: AdapterDefaults


@dataclasses.dataclass(frozen=True)
class LoadRequest:
    """The shared loading settings every loader receives (the model's own are in its options)."""

    path: str | None
    """``model.path``: weights folder or hub id (None: the loader's default, if it has one)."""
    device: Any
    """A resolved ``torch.device``."""
    dtype: str
    """"fp32", "bf16" or "fp16" (the adapter's computing dtype; LoRA weights stay float32)."""


_REGISTRY: dict[str, ModelLoader] = {}


def register_model(
    name: str, *, options: type, defaults: AdapterDefaults
) -> Callable[[Callable[[LoadRequest, Any], FlowModelAdapter]], Callable[[LoadRequest, Any], FlowModelAdapter]]:
    """Decorator registering ``load(request: LoadRequest, options) -> FlowModelAdapter`` as ``model.kind=name``.

    ``options`` is a dataclass with a default and a one-line docstring for every field: ``model.options`` in the
    config is checked against it (unknown keys and wrong types are named errors) and passed to ``load``.
    """
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"model {name!r}: options must be a dataclass, got {options!r}")

    def decorator(
        load: Callable[[LoadRequest, Any], FlowModelAdapter],
    ) -> Callable[[LoadRequest, Any], FlowModelAdapter]:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.load is not load:
            raise ConfigError(f"model {name!r} is registered twice; give the second model another name")
        _REGISTRY[name] = ModelLoader(name, load, options, defaults)
        return load

    return decorator


def model_names() -> list[str]:
    """Every model name: the built-ins and any registered since."""
    return sorted(set(MODEL_MODULES) | set(_REGISTRY))


def model_loader(name: str) -> ModelLoader:
    """The registration of ``model.kind=name`` (importing its module on first use); ConfigError when unknown."""
    if name not in _REGISTRY and name in MODEL_MODULES:
        importlib.import_module(MODEL_MODULES[name])
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown model.kind {name!r}; known models: {', '.join(model_names())}. Fix model.kind, or register "
            "the model with vgpo.models.register_model (docs/models.md)"
        )
    return _REGISTRY[name]


def model_options(config: ModelConfig) -> Any:
    """``config.options`` (plus the legacy top-level keys, :data:`LEGACY_OPTION_KEYS`) as the model's typed options;
    ConfigError naming an unknown key, a wrong type, or a legacy key the model does not take."""
    from vgpo.config import _from_mapping

    loader = model_loader(config.kind)
    fields = {field.name for field in dataclasses.fields(loader.options)}
    values = dict(config.options or {})
    for key, old_default in LEGACY_OPTION_KEYS.items():
        value = getattr(config, key)
        if value is None:
            continue
        if key in fields:
            if key in values and values[key] != value:
                raise ConfigError(f"model.{key}={value!r} and model.options.{key}={values[key]!r} disagree; keep one")
            values[key] = value
        elif value != old_default:
            raise ConfigError(
                f"model.{key} is not an option of model.kind={config.kind} (its options: "
                f"{', '.join(sorted(fields)) or 'none'}); remove it"
            )
    return _from_mapping(loader.options, values, "model.options")


def build_model(config: ModelConfig) -> AdapterPolicy[Any]:
    """The policy of ``config``: the registered loader's adapter inside the shared AdapterPolicy."""
    from vgpo.models.base import AdapterPolicy, Training
    from vgpo.models.common import resolve_device

    loader = model_loader(config.kind)
    options = model_options(config)
    request = LoadRequest(path=config.path, device=resolve_device(config.device), dtype=config.dtype)
    adapter = loader.load(request, options)
    training = Training(
        lora_rank=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_targets=config.lora_targets,
        lora_init=config.lora_init,
        gradient_checkpointing=config.gradient_checkpointing,
        decode_batch_size=config.decode_batch_size,
        prompt_cache=config.prompt_cache,
    )
    return AdapterPolicy(adapter, training, loader.defaults)


__all__ = [
    "MODEL_MODULES",
    "LoadRequest",
    "ModelLoader",
    "build_model",
    "model_loader",
    "model_names",
    "model_options",
    "register_model",
]
