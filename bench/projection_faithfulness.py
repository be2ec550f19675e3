"""Does a step's one-step projection score predict the trajectory's final reward? (TCRM's value-estimate premise)

    python bench/projection_faithfulness.py configs/embedded/compositional_vgpo.yaml --iterations 4 --threads 1

Samples ``--iterations`` batches of SDE rollouts from the preset's model (no training), scores every step's
projection with the task's reward, and, for each option set given with ``--variant-options`` (default: the
graded and the strict compositional checker), prints per step: the mean instant reward, its mean minus the final
reward, and the Pearson correlation of R_t with R_T over all samples and within prompt groups
(:func:`vgpo.math.tcrm_diagnostics.projection_faithfulness`). Randomness follows run.seed, so the figures repeat.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from vgpo.config import load_config
from vgpo.math import calibration_slopes
from vgpo.math.tcrm_diagnostics import projection_faithfulness
from vgpo.rewards import build_reward, checked_call
from vgpo.sampling import step_projections
from vgpo.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--reward-options",
        nargs="+",
        default=['{"strict": false}', '{"strict": true}'],
        help="JSON option sets of the task's reward to compare",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config, [*args.overrides, "run.progress=false"])
    trainer = Trainer(config, "/tmp/vgpo-faithfulness-unused")
    reward_name = config.task.reward or trainer.task.reward_name
    rewards = {
        options: build_reward(reward_name, options={reward_name: json.loads(options)})
        for options in args.reward_options
    }
    scores: dict[str, list[torch.Tensor]] = {options: [] for options in args.reward_options}
    group_ids = []
    for iteration in range(1, args.iterations + 1):
        batch = trainer.sample(iteration)
        states = step_projections(batch.rollout)  # [N, T, C, H, W]
        n, steps = states.shape[:2]
        images = trainer.policy.decode(states.flatten(0, 1))  # decoded once, scored by every option set
        items = [item for item in batch.items for _ in range(steps)]
        prompts, metadata = [i.prompt for i in items], [i.metadata for i in items]
        for options, reward in rewards.items():
            scores[options].append(checked_call(reward, images, prompts, metadata).float().reshape(n, steps))
        group_ids.append(batch.group_ids + iteration * 10_000)  # groups of different iterations stay apart
    groups = torch.cat(group_ids)
    for options, parts in scores.items():
        table = torch.cat(parts)
        result = projection_faithfulness(table, groups)
        slopes = calibration_slopes(table, groups)
        print(f"\nreward {reward_name} {options}: {table.shape[0]} samples x {table.shape[1]} steps")
        print("step  mean R_t  R_t - R_T  corr(R_t, R_T)  within-group corr  calibration slope")
        for t in range(table.shape[1]):
            within = result["within_group_correlation"][t]
            print(
                f"{t + 1:>4}  {float(table[:, t].mean()):8.3f}  {result['mean_minus_final'][t]:+9.3f}  "
                f"{result['correlation'][t]:14.3f}  {within if not math.isnan(within) else float('nan'):17.3f}  {float(slopes[t]):17.3f}"
            )


if __name__ == "__main__":
    main()
