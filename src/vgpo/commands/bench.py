"""`vgpo bench [CONFIG] [overrides]`: seconds per phase of a training iteration, flow_grpo vs vgpo.

Both variants run the same config, seeds and prompts, without evaluation or checkpoints; the first iteration
is a warm-up and is left out of the figures. The ratio vgpo / flow_grpo is the cost of TCRM's per-step rewards
(the model calls are the same; see tests/test_trainer.py).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from vgpo.config import load_config

PHASES = ("sample", "reward", "advantage", "update")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="time a training iteration by phase for flow_grpo and vgpo",
        description="Time training iterations by phase for algorithm.variant=flow_grpo and =vgpo on one config.",
    )
    parser.add_argument("config", nargs="?", default="configs/embedded/compositional_vgpo.yaml", help="YAML preset")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations after one warm-up")
    parser.add_argument("--variants", nargs="+", default=["flow_grpo", "vgpo"], help="variants to compare")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from vgpo.trainer import Trainer

    results: dict[str, dict[str, float]] = {}
    for variant in args.variants:
        config = load_config(args.config, [*args.overrides, f"algorithm.variant={variant}"])
        if config.run.num_threads is not None:
            torch.set_num_threads(config.run.num_threads)
        with tempfile.TemporaryDirectory() as run_dir:
            trainer = Trainer(config, run_dir)
            trainer.train_iteration(1)  # warm-up: caches, allocator, lazy model loads
            totals = dict.fromkeys(PHASES, 0.0)
            start = time.perf_counter()
            for iteration in range(2, 2 + args.iterations):
                record = trainer.train_iteration(iteration)
                for phase in PHASES:
                    totals[phase] += record["seconds"].get(phase, 0.0)
            wall = time.perf_counter() - start
        per_iteration = {phase: value / args.iterations for phase, value in totals.items()}
        per_iteration["total"] = wall / args.iterations
        results[variant] = per_iteration
    s = config.sampling
    header = (
        f"config {args.config} ({' '.join(args.overrides) or 'no overrides'}): {s.prompts_per_iteration} prompts x "
        f"{s.group_size} samples x {s.num_steps} steps, torch threads {torch.get_num_threads()}"
    )
    if args.json:
        print(json.dumps({"setting": header, "seconds_per_iteration": results}, indent=1))
    else:
        print(header)
        print(f"{'variant':<12}" + "".join(f"{p:>11}" for p in (*PHASES, "total")))
        for variant, figures in results.items():
            print(f"{variant:<12}" + "".join(f"{figures[p]:>10.3f}s" for p in (*PHASES, "total")))
    if "flow_grpo" in results and "vgpo" in results:
        ratio = results["vgpo"]["total"] / results["flow_grpo"]["total"]
        print(f"vgpo / flow_grpo time per iteration: {ratio:.2f}x")
    return 0
