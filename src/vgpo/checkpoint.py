"""Atomic, resumable training checkpoints (safetensors + JSON; never pickle).

A checkpoint is a folder ``RUN_DIR/checkpoints/iter_000010`` holding:
    trainable.safetensors   the trainable weights (LoRA or full), by name
    ema.safetensors         the EMA of those weights, under the same names (when EMA is on)
    optimizer.safetensors   the optimizer's per-parameter tensors (AdamW moments and step counts)
    checkpoint.json         iteration, the model's fingerprint and loader settings, the optimizer's
                            hyper-parameters, the torch RNG state, the number of processes that wrote it,
                            and the resolved config
It is written into a temporary sibling folder and renamed into place, so a crash never leaves a half-written
checkpoint under the final name; the newest complete one is what ``--resume`` loads.

The files hold whole tensors also when a run shards its weights over processes (FSDP, `vgpo.sharding`): they are
gathered to the main process to be written, and each process keeps its shard of them when they are loaded, so a
checkpoint is the same whichever number of processes wrote it or reads it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from vgpo.config import json_ready
from vgpo.errors import CheckpointError
from vgpo.sharding import full_tensors, shard_like

if TYPE_CHECKING:
    from vgpo.train_state import TrainState

FORMAT_VERSION = 1
TRAINABLE_FILE = "trainable.safetensors"
EMA_FILE = "ema.safetensors"
SAMPLING_FILE = "sampling.safetensors"  # the sampling policy's weights (DiffusionNFT's old policy), when kept
OPTIMIZER_FILE = "optimizer.safetensors"
META_FILE = "checkpoint.json"
PREFIX = "iter_"


def checkpoint_dir(run_dir: Path, iteration: int) -> Path:
    return run_dir / "checkpoints" / f"{PREFIX}{iteration:06d}"


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu").contiguous() for key, value in state.items()}


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into safetensors-ready tensors (whole, see :func:`full_tensors`) and
    JSON-ready hyper-parameters."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for index, per_param in state["state"].items():
        for key, value in per_param.items():
            tensors[f"{index}.{key}"] = torch.as_tensor(value)
    return full_tensors(tensors), {"param_groups": state["param_groups"]}


def _optimizer_state(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], parameters: list[torch.nn.Parameter]
) -> dict[str, Any]:
    """The optimizer state dict of the files' tensors; a moment shaped like its (sharded) parameter becomes this
    process's shard of it (``parameters`` in the optimizer's order, which numbers the state)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        parameter = parameters[int(index)]
        state.setdefault(int(index), {})[key] = (
            shard_like(parameter, value) if value.shape == parameter.shape else value
        )
    return {"state": state, "param_groups": meta["param_groups"]}


def save(
    state: TrainState,
    run_dir: Path,
    *,
    config: dict[str, Any],
    keep: int,
    world_size: int = 1,
    write: bool = True,
) -> Path | None:
    """Write ``state`` as the checkpoint of ``state.iteration`` atomically, keep the newest ``keep``; returns its
    folder. ``config`` is the run's resolved config (plain data). Only the main process writes: it alone calls
    this, except when the weights are sharded, where every process calls it (gathering them is a collective) and
    the others pass ``write=False`` (they get None)."""
    iteration = state.iteration
    trainable = state.policy.trainable_state_dict()  # collectives first, on every process, in one order
    ema = state.ema.state_dict(state.policy) if state.ema is not None else None
    sampling = state.sampling.state_dict(state.policy) if state.sampling is not None else None
    optimizer_tensors, optimizer_meta = _optimizer_tensors(state.optimizer)
    if not write:
        return None
    final = checkpoint_dir(run_dir, iteration)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    save_file(_contiguous(trainable), str(staging / TRAINABLE_FILE))
    if ema is not None:
        save_file(_contiguous(ema), str(staging / EMA_FILE))
    if sampling is not None:
        save_file(_contiguous(sampling), str(staging / SAMPLING_FILE))
    save_file(optimizer_tensors, str(staging / OPTIMIZER_FILE))
    meta = {
        "format_version": FORMAT_VERSION,
        "iteration": iteration,
        "fingerprint": state.policy.fingerprint(),
        "model": json_ready(config["model"]),
        "optimizer": optimizer_meta,
        "torch_rng_state": trainer_rng_state(),
        "world_size": world_size,
        "config": json_ready(config),
    }
    (staging / META_FILE).write_text(json.dumps(meta, indent=1))
    for file in staging.iterdir():  # flush before the rename makes the checkpoint visible
        with file.open("rb") as handle:
            os.fsync(handle.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    _prune(final.parent, keep)
    return final


def trainer_rng_state() -> list[int]:
    return [int(x) for x in torch.get_rng_state().tolist()]


def _prune(folder: Path, keep: int) -> None:
    complete = list_checkpoints(folder.parent)
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (half-written staging folders are ignored)."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name.startswith(PREFIX) and (p / META_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a vgpo checkpoint (no {META_FILE})")
    try:
        meta: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(
            f"{path} is corrupt ({error}); delete this checkpoint folder to resume from an older one"
        ) from error
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {meta.get('format_version')}, this vgpo reads {FORMAT_VERSION}"
        )
    return meta


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing; delete its folder to resume from an older one")
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for truncated / corrupt files
        raise CheckpointError(f"checkpoint file {path} cannot be read ({error}); it may be truncated") from error


def load_weights(policy: Any, folder: Path, use_ema: bool = False) -> dict[str, Any]:
    """Load a checkpoint's trainable (or EMA) weights into ``policy`` after checking the fingerprint."""
    meta = read_meta(folder)
    expected = policy.fingerprint()
    if meta["fingerprint"] != expected:
        raise CheckpointError(
            f"checkpoint {folder} was written for model {meta['fingerprint']!r} but the policy is {expected!r}; "
            "load it with the model settings it was trained with (see its checkpoint.json 'model')"
        )
    use_ema_file = use_ema and (folder / EMA_FILE).is_file()
    policy.load_trainable_state_dict(_load_tensors(folder / (EMA_FILE if use_ema_file else TRAINABLE_FILE)))
    return meta


def load_latest(state: TrainState, run_dir: Path) -> dict[str, Any]:
    """Restore the newest complete checkpoint of ``run_dir`` into ``state`` (weights, EMA, optimizer, iteration,
    torch RNG); returns its checkpoint.json. Every rank calls it (the files are only read; a process whose weights
    are sharded keeps its shards)."""
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"no checkpoint under {run_dir / 'checkpoints'}; start the run without --resume")
    folder = found[-1]
    meta = load_weights(state.policy, folder)
    if state.ema is not None:
        state.ema.load_state_dict(state.policy, _load_tensors(folder / EMA_FILE))
    if state.sampling is not None:
        state.sampling.load_state_dict(state.policy, _load_tensors(folder / SAMPLING_FILE))
    optimizer_state = _optimizer_state(_load_tensors(folder / OPTIMIZER_FILE), meta["optimizer"], state.parameters)
    state.optimizer.load_state_dict(optimizer_state)
    torch.set_rng_state(torch.tensor(meta["torch_rng_state"], dtype=torch.uint8))
    state.iteration = int(meta["iteration"])
    return meta


def truncate_metrics(path: Path, iteration: int) -> None:
    """Drop metric lines written after ``iteration`` (by a run killed before its next checkpoint)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        if line.strip() and json.loads(line).get("iteration", 0) <= iteration:
            kept.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
