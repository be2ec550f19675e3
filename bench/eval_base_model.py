"""Test accuracy and quality of a tiny-model folder (default: the shipped one) on the embedded tasks.

    python bench/eval_base_model.py [--checkpoint DIR] [--steps 40] [--guidance-scale 1.0 3.0]
        [--samples-per-prompt 1] [--tasks compositional text] [--ground-truth] [--grid DIR]

ODE sampling with ``--steps`` steps on every test prompt; prints one JSON line per (task, guidance scale):
accuracy per sub-category, graded score, the quality suite (vgpo.scoring.image_statistics) and, with 2+ samples per prompt,
diversity. ``--ground-truth`` also scores the task's own renders of the same prompts (the ceiling) and, for a
latent model, its autoencoder's reconstructions of them (the ceiling of what the model can draw).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from vgpo.builders import build_task_evaluator
from vgpo.config import TaskConfig
from vgpo.embedded import get_world
from vgpo.models.tiny import load_tiny_policy
from vgpo.sampling import generate
from vgpo.scoring.image_statistics import diversity, quality_metrics
from vgpo.tasks import get_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--guidance-scale", type=float, nargs="+", default=[1.0])
    parser.add_argument("--samples-per-prompt", type=int, default=1)
    parser.add_argument("--tasks", nargs="+", default=["compositional", "text"])
    parser.add_argument("--max-prompts", type=int, default=None, help="first N test prompts per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ground-truth", action="store_true")
    parser.add_argument("--grid", default=None, help="folder for a PNG grid per task and scale")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    policy = load_tiny_policy(args.checkpoint)
    for name in args.tasks:
        task = get_task(name)
        evaluator = build_task_evaluator(TaskConfig(name=name), task)
        items = task.prompts("test")[: args.max_prompts]
        repeated = [item for item in items for _ in range(args.samples_per_prompt)]
        prompts, metadata = [item.prompt for item in repeated], [item.metadata for item in repeated]
        if args.ground_truth:
            rng = np.random.default_rng(args.seed)
            world = get_world(name)
            truth = torch.from_numpy(np.stack([world.render(item, rng) for item in repeated]))
            truth = truth.permute(0, 3, 1, 2).float() / 255.0
            print(json.dumps({"task": name, "source": "ground_truth", **evaluator(truth, prompts, metadata)}))
            if (
                policy.adapter.model.autoencoder is not None
            ):  # a latent model's ceiling: its autoencoder's reconstructions
                with torch.no_grad():
                    rebuilt = policy.decode(policy.adapter.model.to_latents(truth * 2.0 - 1.0))
                print(json.dumps({"task": name, "source": "autoencoder", **evaluator(rebuilt, prompts, metadata)}))
        for scale in args.guidance_scale:
            start = time.perf_counter()
            with torch.no_grad():
                images = generate(
                    policy,
                    [item.prompt for item in repeated],
                    num_steps=args.steps,
                    seed=args.seed,
                    guidance_scale=scale,
                )
            seconds = time.perf_counter() - start
            metrics = {"task": name, "guidance_scale": scale, "prompts": len(items), "sample_seconds": seconds}
            metrics.update(evaluator(images, prompts, metadata))
            metrics.update({f"quality/{k}": v for k, v in quality_metrics(images).items()})
            if args.samples_per_prompt > 1:
                metrics["diversity"] = diversity(images.reshape(len(items), args.samples_per_prompt, 3, 64, 64))
            print(json.dumps(metrics), flush=True)
            if args.grid:
                from vgpo.commands.sample import make_grid, save_png

                Path(args.grid).mkdir(parents=True, exist_ok=True)
                save_png(make_grid(images[:64], 8), Path(args.grid) / f"{name}_cfg{scale:g}.png")


if __name__ == "__main__":
    main()
