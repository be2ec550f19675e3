"""Rollout benchmark of the embedded tiny model: 8 prompts x 8 samples x 10 SDE steps (batch 64).

    python bench/bench_rollout.py [--checkpoint DIR] [--guidance-scale 1.0] [--repeats 3] [--threads 2]

Prints the median wall time of one rollout (the issue's target: well under 5 s on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vgpo.models.tiny import load_tiny_policy
from vgpo.policy import select_rows
from vgpo.sampling import rollout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="model folder (default: the shipped tiny model)")
    parser.add_argument("--guidance-scale", type=float, default=1.0)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lora-rank", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    policy = load_tiny_policy(args.checkpoint, lora_rank=args.lora_rank)
    prompts = [f'a sign that says "AB{k}"' if k % 2 else f"{k % 4 + 1} red circles" for k in range(args.prompts)]
    cond = policy.encode_prompts(prompts)
    index = torch.arange(args.prompts).repeat_interleave(args.group_size)  # [N = B * G]
    cond = select_rows(cond, index)
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(args.repeats + 1):  # the first run warms up
        start = time.perf_counter()
        with torch.no_grad():
            rollout(policy, cond, args.steps, guidance_scale=args.guidance_scale, generator=generator)
        times.append(time.perf_counter() - start)
    median = statistics.median(times[1:])
    print(
        f"rollout {args.prompts} prompts x {args.group_size} samples x {args.steps} steps "
        f"(guidance {args.guidance_scale}, {args.threads} threads): median {median:.2f}s "
        f"over {args.repeats} (all: {', '.join(f'{t:.2f}' for t in times[1:])})"
    )


if __name__ == "__main__":
    main()
