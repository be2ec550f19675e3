"""What a task is: prompt sets shipped as JSONL, a ground-truth renderer for pretraining, and an evaluator.

Each task of the embedded world (compositional scenes, text rendering) implements :class:`Task`; the trainer
and the pretraining command only use this interface and ``get_task(name)``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from vgpo.errors import ConfigError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class PromptItem:
    """One prompt and its structured spec; ``metadata`` is JSON-serialisable and has a ``"category"``."""

    prompt: str
    metadata: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps({"prompt": self.prompt, "metadata": self.metadata}, sort_keys=True)


@runtime_checkable
class Task(Protocol):
    """A task of the embedded world (see the module docstring)."""

    name: str
    image_size: int
    reward_name: str

    def prompts(self, split: str) -> list[PromptItem]:
        """The shipped prompt set of ``split`` ("train" or "test")."""
        ...

    def render(self, item: PromptItem, rng: np.random.Generator) -> np.ndarray:
        """A ground-truth image uint8 [H, W, 3] for ``item`` with a random layout drawn from ``rng``."""
        ...

    def sample_items(self, rng: np.random.Generator, n: int) -> list[PromptItem]:
        """``n`` fresh random items for pretraining (never one held out for the test split)."""
        ...

    def evaluate(self, images: torch.Tensor, items: list[PromptItem]) -> dict[str, float]:
        """Task accuracy of images [N, 3, H, W] in [0, 1]: "accuracy", "accuracy/<category>", "score"."""
        ...


def prompt_file(task_name: str, split: str) -> Path:
    """Path of the shipped JSONL prompt set ``vgpo/data/prompts/<task>_<split>.jsonl``."""
    if split not in SPLITS:
        raise ConfigError(f"unknown prompt split {split!r}; use one of {', '.join(SPLITS)}")
    return Path(str(resources.files("vgpo") / "data" / "prompts" / f"{task_name}_{split}.jsonl"))


def load_prompts(path: Path) -> list[PromptItem]:
    """Read prompts: JSONL of ``{"prompt": ..., "metadata": {...}}`` lines, or (``.txt``) one prompt a line.

    Plain-text prompts get ``{"category": "all"}`` as metadata: enough for rewards that only read the prompt,
    not for the task checkers, which need the structured spec of the JSONL sets.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            f"prompt file {path} is missing; regenerate the shipped sets with `python scripts/make_prompts.py`"
        )
    items = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if path.suffix == ".txt":
                items.append(PromptItem(prompt=line.strip(), metadata={"category": "all"}))
                continue
            try:
                record = json.loads(line)
                items.append(PromptItem(prompt=str(record["prompt"]), metadata=dict(record["metadata"])))
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ConfigError(
                    f"{path}:{line_number} is not a prompt record ({error}); each line must be "
                    '{"prompt": "...", "metadata": {"category": "...", ...}}'
                ) from error
    return items


def save_prompts(path: Path, items: Sequence[PromptItem]) -> None:
    """Write items as JSONL (one record a line, keys sorted, so regenerated files diff cleanly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for item in items:
            handle.write(item.to_json() + "\n")


def summarise_accuracy(passed: Sequence[bool], scores: Sequence[float], categories: Sequence[str]) -> dict[str, float]:
    """``accuracy`` (mean strict pass), ``accuracy/<category>`` and ``score`` (mean graded score)."""
    if not passed:
        return {"accuracy": float("nan"), "score": float("nan")}
    by_category: dict[str, list[bool]] = defaultdict(list)
    for ok, category in zip(passed, categories, strict=True):
        by_category[category].append(bool(ok))
    result = {"accuracy": float(np.mean(passed)), "score": float(np.mean(scores))}
    for category in sorted(by_category):
        result[f"accuracy/{category}"] = float(np.mean(by_category[category]))
    return result


def images_to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images [N, 3, H, W] float in [0, 1] -> uint8 [N, H, W, 3] (values outside [0, 1] are clipped)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"expected images of shape [N, 3, H, W], got {tuple(images.shape)}")
    array = images.detach().to("cpu", torch.float32).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return np.round(array * 255.0).astype(np.uint8)


def uint8_to_images(arrays: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] (or a list of [H, W, 3]) -> float images [N, 3, H, W] in [0, 1]."""
    stacked = np.stack(list(arrays)) if not isinstance(arrays, np.ndarray) else arrays
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).float().div(255.0)
