"""Optional experiment trackers fed with each metrics record: TensorBoard, Weights & Biases."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

Logger = Callable[[dict[str, Any]], None]


def _scalars(record: dict[str, Any], prefix: str) -> dict[str, float]:
    """Flatten a metrics record to {"train/reward_mean": 0.5, "train/seconds/sample": 1.2, ...}."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in ("kind", "iteration"):
            continue
        if isinstance(value, dict):
            out.update(_scalars(value, f"{prefix}/{key}"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[f"{prefix}/{key}"] = float(value)
    return out


def tensorboard_logger(log_dir: Path) -> Logger | None:
    """A TensorBoard writer, or None (with a warning) when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("tensorboard is not installed; `pip install tensorboard` to log there", stacklevel=2)
        return None
    writer = SummaryWriter(log_dir=str(log_dir))

    def log(record: dict[str, Any]) -> None:
        for name, value in _scalars(record, record.get("kind", "train")).items():
            writer.add_scalar(name, value, global_step=int(record.get("iteration", 0)))
        writer.flush()

    return log


def wandb_logger(project: str, config: dict[str, Any], run_dir: Path) -> Logger | None:
    """A Weights & Biases run, or None (with a warning) when wandb is missing."""
    try:
        import wandb
    except ImportError:
        warnings.warn("wandb is not installed; `pip install wandb` to log there", stacklevel=2)
        return None
    run = wandb.init(project=project, config=config, dir=str(run_dir), name=run_dir.name)

    def log(record: dict[str, Any]) -> None:
        run.log(_scalars(record, record.get("kind", "train")), step=int(record.get("iteration", 0)))

    return log
