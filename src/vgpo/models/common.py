"""Helpers the model adapters share: device names, and saving and loading trainable weights by name (whole
tensors, also when the weights are sharded over processes; see `vgpo.parallel.sharding`)."""

from __future__ import annotations

import torch

from vgpo.errors import ConfigError
from vgpo.parallel.sharding import full_tensors, shard_like


def resolve_device(name: str | torch.device, what: str = "model.device") -> torch.device:
    """'auto' -> CUDA when available, else CPU; anything else as torch spells it (checked to exist)."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"{what} {name!r} is not a device torch knows (auto, cpu, cuda, cuda:1, ...)") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{what}={name!r} but no CUDA device is available; use cpu")
    return device


def state_mismatch(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str | None:
    """What keeps ``state`` from loading into tensors shaped like ``expected`` (missing, unexpected or
    mis-shaped keys), or None when it fits."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        return f"missing {missing[:5]} ({len(missing)} in all), unexpected {unexpected[:5]} ({len(unexpected)} in all)"
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            return f"{name} has shape {tuple(state[name].shape)}, expected {tuple(tensor.shape)}"
    return None


def named_state(named: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """Whole CPU copies of the parameters ``named``, for checkpoints. Sharded weights are gathered (every process
    must call it then) and returned on rank 0 only (see :func:`vgpo.parallel.sharding.full_tensors`)."""
    return full_tensors(dict(named))


@torch.no_grad()
def load_named_parameters(named: dict[str, torch.nn.Parameter], state: dict[str, torch.Tensor], owner: str) -> None:
    """Copy ``state`` into the parameters ``named`` (each process keeps its shard of a sharded weight); ValueError
    naming missing, unexpected or mis-shaped keys."""
    problem = state_mismatch(dict(named), state)
    if problem is not None:
        raise ValueError(f"trainable state does not match {owner}: {problem}")
    for name, parameter in named.items():
        parameter.copy_(shard_like(parameter, state[name].to(parameter.device, parameter.dtype)))
