"""The paper's quality suite for a trained run, side by side with its base model (Table 1's quality columns).

``vgpo eval RUN_DIR --prompts drawbench.txt --quality aesthetic,deqa,imagereward,pickscore,unifiedreward``
generates ODE samples of every prompt with the base model and with the run's weights (same seeds, so the two
columns differ only by the training), scores both with each named reward and reports mean per reward, base vs
run. The rewards are the registered ones; their options come from the run config's ``task.reward_options``
entry of the same name, else from their environment variables (docs/rewards.md).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from vgpo.errors import ConfigError
from vgpo.rewards import build_reward, checked_call


def read_prompts(path: Path) -> list[str]:
    """Prompts of a text file (one per line; blank lines and ``#`` comments skipped) or of a CSV with a
    ``Prompts`` / ``prompt`` column (DrawBench's published CSV has ``Prompts,Category``)."""
    if not path.is_file():
        raise ConfigError(f"prompt file {str(path)!r} does not exist; pass a text file with one prompt per line")
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            column = next(
                (name for name in reader.fieldnames or [] if name.strip().lower() in ("prompts", "prompt")), None
            )
            if column is None:
                raise ConfigError(
                    f"CSV {str(path)!r} has no 'Prompts' or 'prompt' column (columns: {reader.fieldnames})"
                )
            prompts = [row[column].strip() for row in reader if (row.get(column) or "").strip()]
    else:
        lines = path.read_text(encoding="utf-8").splitlines()
        prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ConfigError(f"prompt file {str(path)!r} holds no prompts")
    return prompts


def parse_quality_names(text: str) -> list[str]:
    """``"aesthetic, pickscore"`` -> ["aesthetic", "pickscore"] (order kept, duplicates dropped)."""
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise ConfigError("--quality needs at least one reward name, e.g. --quality aesthetic,imagereward,pickscore")
    return names


def score_suite(
    images: torch.Tensor, prompts: list[str], names: Sequence[str], options: dict[str, dict[str, Any]]
) -> dict[str, torch.Tensor]:
    """{reward name: scores [N]} of images [N, 3, H, W] and their N prompts, each reward built by name."""
    scores = {}
    for name in names:
        reward = build_reward(name, options={name: options[name]} if name in options else None)
        scores[name] = checked_call(reward, images, prompts, [{} for _ in prompts], name=name)
    return scores


def compare(
    generate_base: Callable[[], torch.Tensor],
    generate_run: Callable[[], torch.Tensor],
    prompts: list[str],
    names: Sequence[str],
    options: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Scores of the base model's and the run's images (generated in that order) -> the comparison record.

    Rewards are built before any image is generated, so a missing weight folder fails at once.
    """
    for name in names:  # fail fast: build (and so check) every reward before minutes of sampling
        build_reward(name, options={name: options[name]} if name in options else None)
    base = score_suite(generate_base(), prompts, names, options)
    run = score_suite(generate_run(), prompts, names, options)
    table = {
        name: {
            "base": float(base[name].mean()),
            "run": float(run[name].mean()),
            "delta": float(run[name].mean() - base[name].mean()),
        }
        for name in names
    }
    per_image = {name: {"base": base[name].tolist(), "run": run[name].tolist()} for name in names}
    return {"images": len(prompts), "means": table, "per_image": per_image}


def format_table(record: dict[str, Any], run_label: str) -> str:
    """A Markdown table: reward | base | run | run - base."""
    lines = [f"| reward | base | {run_label} | run - base |", "|---|---:|---:|---:|"]
    for name, row in record["means"].items():
        lines.append(f"| {name} | {row['base']:.4f} | {row['run']:.4f} | {row['delta']:+.4f} |")
    return "\n".join(lines)


def write_outputs(record: dict[str, Any], table: str, out: Path) -> None:
    """``out/quality.json`` (means and per-image scores) and ``out/quality.md`` (the table)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "quality.md").write_text(table + "\n")


__all__ = ["compare", "format_table", "parse_quality_names", "read_prompts", "score_suite", "write_outputs"]
