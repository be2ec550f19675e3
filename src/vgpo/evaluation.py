"""Evaluation on held-out prompts: ODE sampling, task accuracy per sub-category, the task reward, the
image-quality suite and diversity across each prompt's samples (to expose reward hacking, like the paper's
quality columns)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vgpo.experiments.report import save_grid
from vgpo.policy import FlowPolicy
from vgpo.rewards import RewardFn, checked_call
from vgpo.sampling import generate
from vgpo.scoring.image_statistics import diversity, quality_metrics
from vgpo.tasks import Evaluator
from vgpo.tasks.prompts import PromptItem

EVAL_SEED_OFFSET = 12345  # evaluation noise: run.seed + this, apart from every training stream


def evaluation_seed(run_seed: int) -> int:
    """The seed of evaluation's ODE samples: the same for a run's evaluations, `vgpo eval` and its base model."""
    return run_seed + EVAL_SEED_OFFSET


@dataclass(frozen=True)
class Evaluation:
    """What an evaluation runs, set up once from a config (`vgpo.builders.build_evaluation`) and shared by the
    trainer and `vgpo eval`: the test prompts, the task's evaluator, the reward to score (None: the task's own
    score, reported by the evaluator), and the ODE sampling settings and seed."""

    evaluator: Evaluator
    reward: RewardFn | None
    items: list[PromptItem]
    samples_per_prompt: int
    num_steps: int
    guidance_scale: float
    seed: int

    def run(self, policy: FlowPolicy, grid_path: Path | None = None) -> dict[str, Any]:
        """The metrics of ``policy`` (see :func:`evaluate_policy`); optionally a PNG grid of the samples."""
        return evaluate_policy(
            policy,
            self.evaluator,
            self.reward,
            self.items,
            samples_per_prompt=self.samples_per_prompt,
            num_steps=self.num_steps,
            guidance_scale=self.guidance_scale,
            seed=self.seed,
            grid_path=grid_path,
        )


@torch.no_grad()
def evaluate_policy(
    policy: FlowPolicy,
    evaluator: Evaluator,
    reward: RewardFn | None,
    items: list[PromptItem],
    *,
    samples_per_prompt: int,
    num_steps: int,
    guidance_scale: float,
    seed: int,
    grid_path: Path | None = None,
) -> dict[str, Any]:
    """Metrics of ``samples_per_prompt`` ODE samples for each of ``items``; optionally a PNG grid of them.

    ``evaluator`` gives the task metrics (`vgpo.tasks.evaluators`). ``reward`` None means the training reward is
    the task's own, whose mean the evaluator reports as "score": it is not computed a second time (with OCR that
    would double the evaluation's cost).
    """
    repeated = [item for item in items for _ in range(samples_per_prompt)]
    images = generate(
        policy,
        [item.prompt for item in repeated],
        num_steps=num_steps,
        seed=seed,
        sde=False,
        guidance_scale=guidance_scale,
    )
    if images.dim() == 5:  # videos [N, F, 3, H, W]: one GIF each, then evaluated as their frames
        if grid_path is not None:
            save_gifs(images, grid_path.with_suffix(""))
        frames = images.shape[1]
        images = images.flatten(0, 1)  # [N * F, 3, H, W], video-major
        repeated = [item for item in repeated for _ in range(frames)]
        samples_per_prompt *= frames
    prompts, metadata = [item.prompt for item in repeated], [item.metadata for item in repeated]
    metrics: dict[str, Any] = dict(evaluator(images, prompts, metadata))
    if reward is None:  # the task's own reward: the evaluator already scored every image with it ("score")
        metrics["reward"] = metrics["score"]
    else:
        scores = checked_call(reward, images, prompts, metadata)
        metrics["reward"] = float(scores.float().mean())
    metrics.update({f"quality/{key}": value for key, value in quality_metrics(images).items()})
    if samples_per_prompt > 1:
        per_prompt = images.reshape(len(items), samples_per_prompt, *images.shape[1:])  # [P, S, 3, H, W]
        metrics["diversity"] = float(diversity(per_prompt))
    if grid_path is not None:
        save_grid(images[:64], grid_path, columns=max(samples_per_prompt, 8))
    return metrics


def save_gifs(videos: torch.Tensor, folder: Path, fps: int = 8) -> list[Path]:
    """Each video [F, 3, H, W] in [0, 1] of ``videos`` [N, F, 3, H, W] as ``folder/sample_{i:03d}.gif`` (looping)."""
    from PIL import Image

    from vgpo.scoring.images import images_to_uint8

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, video in enumerate(videos):
        pixels = images_to_uint8(video)  # [F, H, W, 3]
        frames = [Image.fromarray(frame) for frame in pixels]
        path = folder / f"sample_{index:03d}.gif"
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0)
        paths.append(path)
    return paths
