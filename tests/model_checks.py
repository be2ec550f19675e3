"""Acceptance checks every diffusers adapter passes on its tiny random pipeline (tests/test_flux.py, test_wan.py,
test_qwen_image.py): the first PPO ratio, FSDP shard units, `vgpo train` with both methods, and a bitwise resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vgpo.config import config_from_dict
from vgpo.math import sde_step
from vgpo.sampling import rollout
from vgpo.tasks import get_task
from vgpo.trainer import Trainer

QUICK = [
    "task.name=compositional",
    "sampling.num_steps=2",
    "sampling.group_size=2",
    "sampling.prompts_per_iteration=2",
    "sampling.eval_num_steps=2",
    "sampling.eval_samples_per_prompt=1",
    "sampling.eval_max_prompts=2",
    "optim.micro_batch_size=4",
    "algorithm.clip_range=0.2",
    "model.lora_rank=4",
    "model.lora_alpha=8",
    "model.dtype=fp32",
    "model.device=cpu",
    "run.progress=false",
    "run.tensorboard=false",
    "run.num_threads=1",
]


def perturb_lora(module: torch.nn.Module, seed: int = 1) -> None:
    """Every LoRA B drawn off zero (the adapters start as a no-op), as a policy some way into training."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if ".lora_B." in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)


def redness(images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
    """A toy reward with spread inside every group: mean red minus mean blue, [N] (frames averaged for videos)."""
    return (images[:, ..., 0, :, :] - images[:, ..., 2, :, :]).flatten(1).mean(dim=1)


def assert_first_ratio_is_one(
    policy: Any,
    prompts: Sequence[str],
    *,
    guidance_scale: float,
    model_kind: str,
    run_dir: Path,
    sampling: dict[str, Any] | None = None,
) -> None:
    """The first PPO ratio is exactly 1, two ways: (1) a stored SDE transition of a rollout re-scored by
    ``sde_step(prev_sample=...)`` under the same policy, same batch, gives the rollout's log-prob bitwise; (2) the
    trainer's own first optimizer step (micro-batches unlike the rollout's) reports ``first_ratio_error`` 0."""
    perturb_lora(policy.denoiser)
    cond = policy.encode_prompts(list(prompts))
    noise_level = 0.7
    result = rollout(
        policy, cond, 3, guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(0), sde=True
    )
    rows = len(prompts)
    for step in range(3):
        sigma, sigma_next = float(result.sigmas[step]), float(result.sigmas[step + 1])
        with torch.no_grad():
            velocity = policy.velocity(result.latents[:, step], torch.full((rows,), sigma), cond, guidance_scale)
        rescored = sde_step(
            result.latents[:, step], velocity.float(), sigma, sigma_next, noise_level,
            prev_sample=result.latents[:, step + 1],
        )  # fmt: skip
        assert torch.equal(rescored.log_prob, result.log_probs[:, step]), step
        assert torch.exp(rescored.log_prob - result.log_probs[:, step]).eq(1.0).all()

    config = config_from_dict(
        {
            "model": {"kind": model_kind, "lora_rank": 4, "lora_alpha": 8, "dtype": "fp32"},
            # micro-batches of 3 over 4 samples at mixed steps: shapes unlike the rollout's
            "sampling": {
                "num_steps": 3,
                "guidance_scale": guidance_scale,
                "group_size": 2,
                "prompts_per_iteration": 2,
                **(sampling or {}),
            },
            "algorithm": {"variant": "vgpo", "clip_range": 1e-4},
            "optim": {"micro_batch_size": 3, "steps_per_epoch": 2},
            "run": {"iterations": 1, "progress": False, "tensorboard": False},
        }
    )
    trainer = Trainer(config, run_dir, policy=policy, task=get_task("compositional"), reward=redness)
    perturb_lora(policy.denoiser)  # the trainer re-seeded; keep the adapters off their no-op start
    batch = trainer.sample(1)
    credit = trainer.advantages(trainer.score(batch))
    stats = trainer.update(batch, credit, 1)
    assert stats["first_ratio_error"] == 0.0, stats


def assert_shard_units_cover_every_block(policy: Any, block_lists: Sequence[str]) -> None:
    """Every block of every listed block list is a shard unit, each once, with the transformer after its blocks
    (and the same for the frozen full copy of a full fine-tune)."""
    units = policy.shard_units()
    assert len({id(unit) for unit in units}) == len(units)
    models = [policy.denoiser]
    if not policy.is_lora:
        models.append(policy._reference)  # the frozen full copy
    expected: list[torch.nn.Module] = []
    for model in models:
        blocks = [block for name in block_lists for block in getattr(model, name)]
        assert blocks, block_lists
        expected.extend([*blocks, model])
    assert [id(unit) for unit in units] == [id(unit) for unit in expected]
    # no transformer block outside the units: every ModuleList of the model is one of the listed block lists
    for model in models:
        lists = {name for name, child in model.named_children() if isinstance(child, torch.nn.ModuleList)}
        assert lists <= set(block_lists), lists


def vgpo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "vgpo.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env
    )


def write_preset(kind: str, folder: Path, tmp_path: Path) -> Path:
    preset = tmp_path / f"{kind}.yaml"
    preset.write_text(f"model:\n  kind: {kind}\n  path: {folder}\n")
    return preset


def assert_train_through_cli(kind: str, folder: Path, model_overrides: Sequence[str], tmp_path: Path) -> None:
    """One VGPO and one Flow-GRPO iteration through `vgpo train` (evaluation at the end), then `vgpo export` of
    the VGPO run writes a LoRA file."""
    preset = write_preset(kind, folder, tmp_path)
    for variant in ("vgpo", "flow_grpo"):
        run_dir = tmp_path / variant
        result = vgpo(
            "train", str(preset), *QUICK, *model_overrides, f"algorithm.variant={variant}", "run.iterations=1",
            "run.eval_at_start=false", "--out", str(run_dir), cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        train = [record for record in records if record["kind"] == "train"]
        assert len(train) == 1 and torch.isfinite(torch.tensor(train[0]["loss"]))
        assert (run_dir / "checkpoints" / "iter_000001" / "trainable.safetensors").is_file()
    result = vgpo("export", str(tmp_path / "vgpo"), str(tmp_path / "lora"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()


def assert_resume_is_bitwise(kind: str, folder: Path, model_overrides: Sequence[str], tmp_path: Path) -> None:
    """Two iterations in one run end with the same weights, EMA and optimizer state, byte for byte, as one
    iteration then `vgpo train --resume` to two."""
    preset = write_preset(kind, folder, tmp_path)
    common = [
        *QUICK, *model_overrides, "algorithm.variant=vgpo", "run.eval_at_start=false", "run.eval_every=0",
        "run.checkpoint_every=1",
    ]  # fmt: skip
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    result = vgpo("train", str(preset), *common, "run.iterations=2", "--out", str(whole), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    result = vgpo("train", str(preset), *common, "run.iterations=1", "--out", str(resumed), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    result = vgpo("train", "--resume", str(resumed), "run.iterations=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    final = Path("checkpoints") / "iter_000002"
    first = (whole / "checkpoints" / "iter_000001" / "trainable.safetensors").read_bytes()
    assert (whole / final / "trainable.safetensors").read_bytes() != first  # the second iteration trained
    for name in ("trainable.safetensors", "ema.safetensors", "optimizer.safetensors"):
        assert (resumed / final / name).read_bytes() == (whole / final / name).read_bytes(), name
    losses = [
        [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
        for run in (whole, resumed)
    ]
    assert losses[0] == losses[1] and len(losses[0]) == 2
