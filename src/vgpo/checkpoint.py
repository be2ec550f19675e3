"""Atomic, resumable training checkpoints (safetensors + JSON; never pickle).

A checkpoint is a folder ``RUN_DIR/checkpoints/iter_000010`` holding:
    trainable.safetensors   the trainable weights (LoRA or full), by name
    ema.safetensors         the EMA of those weights, under the same names (when EMA is on)
    sampling.safetensors    the weights rollouts are drawn with, when the method keeps its own (DiffusionNFT)
    optimizer.safetensors   the optimizer's per-parameter tensors (AdamW moments and step counts)
    checkpoint.json         iteration, the model's fingerprint and loader settings, the optimizer's
                            hyper-parameters, the torch RNG state, the number of processes that wrote it,
                            the resolved config, and the SHA-256 of each file above (`vgpo.checksums`)
It is written into a temporary sibling folder and renamed into place, so a crash never leaves a half-written
checkpoint under the final name; the newest complete one is what ``--resume`` loads, and the staging folders a
kill leaves behind are removed when the run resumes (:func:`prepare_resume`).

State that cannot be trusted is never used silently: a checkpoint of non-finite tensors (diverged weights) is
refused when written and when read, naming the tensor, and a file whose bytes no longer match its recorded
checksum is refused when read.

The files hold whole tensors also when a run shards its weights over processes (FSDP, `vgpo.parallel.sharding`): they are
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

from vgpo import checksums
from vgpo.config import json_ready
from vgpo.errors import CheckpointError, require_file
from vgpo.parallel.sharding import full_tensors, shard_like

if TYPE_CHECKING:
    from vgpo.train_state import TrainState

FORMAT_VERSION = 1
TRAINABLE_FILE = "trainable.safetensors"
EMA_FILE = "ema.safetensors"
SAMPLING_FILE = "sampling.safetensors"  # the sampling policy's weights (DiffusionNFT's old policy), when kept
OPTIMIZER_FILE = "optimizer.safetensors"
META_FILE = "checkpoint.json"
PREFIX = "iter_"
STAGING_PREFIX = ".tmp-"


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
    files = {TRAINABLE_FILE: _contiguous(trainable), OPTIMIZER_FILE: optimizer_tensors}
    if ema is not None:
        files[EMA_FILE] = _contiguous(ema)
    if sampling is not None:
        files[SAMPLING_FILE] = _contiguous(sampling)
    for name, tensors in files.items():
        problem = _non_finite(tensors)
        if problem is not None:
            good = list_checkpoints(run_dir)
            learning_rate = config.get("optim", {}).get("learning_rate")
            raise CheckpointError(
                f"refusing to write the checkpoint of iteration {iteration}: {name} {problem}: the training "
                f"diverged. Likely cause: a learning rate too high for this model (optim.learning_rate="
                f"{learning_rate}), or rewards of extreme size; lower it and "
                + (f"resume from the last good checkpoint, {good[-1]}" if good else "start the run again")
            )
    final = checkpoint_dir(run_dir, iteration)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f"{STAGING_PREFIX}{final.name}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    for name, tensors in files.items():
        save_file(tensors, str(staging / name))
    meta = {
        "format_version": FORMAT_VERSION,
        "iteration": iteration,
        "fingerprint": state.policy.fingerprint(),
        "model": json_ready(config["model"]),
        "optimizer": optimizer_meta,
        "torch_rng_state": trainer_rng_state(),
        "world_size": world_size,
        "config": json_ready(config),
        "sha256": checksums.record(staging, files),
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


def _non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """Where the first tensor with NaN or inf values is (its name and how many), or None when all are finite."""
    for key, value in tensors.items():
        if value.is_floating_point() or value.is_complex():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                return f"tensor {key!r} holds {bad} non-finite value(s) (NaN or inf) of {value.numel()}"
    return None


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
    require_file(path, f"{folder} is not a vgpo checkpoint (no {META_FILE})", CheckpointError)
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


def _load_tensors(path: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A checkpoint file's tensors after checking its recorded checksum and that every value is finite."""
    fix = "delete its folder to resume from an older one"
    require_file(path, f"checkpoint file {path} is missing; {fix}", CheckpointError)
    checksums.verify(path, meta.get("sha256"), fix)
    try:
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for truncated / corrupt files
        raise CheckpointError(f"checkpoint file {path} cannot be read ({error}); it may be truncated") from error
    problem = _non_finite(tensors)
    if problem is not None:
        raise CheckpointError(
            f"checkpoint file {path}: {problem}; the training had diverged when it was written (likely a learning "
            f"rate too high for the model); {fix}, and lower optim.learning_rate"
        )
    return tensors


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
    policy.load_trainable_state_dict(_load_tensors(folder / (EMA_FILE if use_ema_file else TRAINABLE_FILE), meta))
    return meta


def load_latest(state: TrainState, run_dir: Path) -> dict[str, Any]:
    """Restore the newest complete checkpoint of ``run_dir`` into ``state`` (weights, EMA, optimizer, iteration,
    torch RNG); returns its checkpoint.json. Every rank calls it (the files are only read; a process whose weights
    are sharded keeps its shards)."""
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(
            f"no checkpoint under {run_dir / 'checkpoints'}: the run stopped before its first; `vgpo train --resume "
            f"{run_dir}` starts it again from the beginning"
        )
    folder = found[-1]
    meta = load_weights(state.policy, folder)
    if state.ema is not None:
        state.ema.load_state_dict(state.policy, _load_tensors(folder / EMA_FILE, meta))
    if state.sampling is not None:
        state.sampling.load_state_dict(state.policy, _load_tensors(folder / SAMPLING_FILE, meta))
    tensors = _load_tensors(folder / OPTIMIZER_FILE, meta)
    optimizer_state = _optimizer_state(tensors, meta["optimizer"], state.parameters)
    state.optimizer.load_state_dict(optimizer_state)
    torch.set_rng_state(torch.tensor(meta["torch_rng_state"], dtype=torch.uint8))
    state.iteration = int(meta["iteration"])
    return meta


def prepare_resume(run_dir: Path) -> tuple[bool, list[Path]]:
    """Before a run resumes (main process): remove the staging folders a kill left behind; returns (whether the
    run has a checkpoint to resume from, the folders removed)."""
    folder = run_dir / "checkpoints"
    removed = []
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.name.startswith(f"{STAGING_PREFIX}{PREFIX}") and path.is_dir():
                shutil.rmtree(path)
                removed.append(path)
    return bool(list_checkpoints(run_dir)), removed


def truncate_metrics(path: Path, iteration: int) -> None:
    """Drop metric lines written after ``iteration`` (by a run killed before its next checkpoint), and a last
    line cut short by the kill; a line that is not a JSON record elsewhere is a CheckpointError naming it."""
    if not path.exists():
        return
    kept = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            if number == len(lines):  # written after the last checkpoint, cut short by the kill: dropped
                continue
            raise CheckpointError(
                f"{path}:{number} is not a JSON record ({line[:60]!r}); the metrics log was edited or damaged. "
                "Remove or repair that line, then resume"
            )
        if record.get("iteration", 0) <= iteration:
            kept.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
