"""`vgpo bench [CONFIG ...] [section.key=value ...] [--methods ...]`: seconds per phase and model evaluations of a
training iteration, per method (default flow_grpo and vgpo).

Without a config it times both embedded tasks (the compositional scene checker and the text task's OCR
reward) and prints each method's time per iteration against Flow-GRPO's, and its model evaluations (velocity
evaluations per sample, sampling and update; a CFG pair counts once): e.g. the cost of TCRM's per-step rewards (the
model calls are the same), or what a window method saves. All methods of a task run the same config, seeds and
prompts, without evaluation or checkpoints; the first iteration is a warm-up and is left out of the figures.
With task.reward_workers >= 1 (the default) the "sample" phase includes the reward work done while the
sampler ran, and "reward" is what was left to wait for; compare the totals.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from typing import Any

from vgpo.builders import build_task
from vgpo.config import load_config

PHASES = ("sample", "reward", "advantage", "update")
EMBEDDED = ("configs/embedded/compositional_vgpo.yaml", "configs/embedded/text_vgpo.yaml")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="time a training iteration by phase, per method (default flow_grpo and vgpo)",
        description="Time training iterations by phase and count their model evaluations for each method "
        "(algorithm.method) on each config (default: both embedded tasks), and print each one's time against "
        "flow_grpo's.",
    )
    parser.add_argument(
        "arguments",
        nargs="*",
        metavar="CONFIG_OR_OVERRIDE",
        help=f"YAML presets (default: {' and '.join(EMBEDDED)}) and section.key=value overrides applied to each",
    )
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations after one warm-up")
    parser.add_argument(
        "--methods", "--variants", dest="methods", nargs="+", default=["flow_grpo", "vgpo"], help="methods to compare"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.set_defaults(func=run)


def time_method(config_path: str, overrides: list[str], method: str, iterations: int) -> dict[str, float]:
    """Mean seconds per phase and in total, and model evaluations, per iteration over ``iterations`` iterations
    after a warm-up."""
    import torch

    from vgpo.methods.registry import required_overrides
    from vgpo.trainer import Trainer

    # what the method cannot run without (distinct x_T for the ODE-sampled ones) comes last
    config = load_config(config_path, [*overrides, f"algorithm.method={method}", *required_overrides(method)])
    if config.run.num_threads is not None:
        torch.set_num_threads(config.run.num_threads)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(config, run_dir)
        trainer.train_iteration(1)  # warm-up: caches, allocator, lazy model loads
        totals = dict.fromkeys(PHASES, 0.0)
        evaluations = 0
        start = time.perf_counter()
        for iteration in range(2, 2 + iterations):
            record = trainer.train_iteration(iteration)
            for phase in PHASES:
                totals[phase] += record["seconds"].get(phase, 0.0)
            evaluations += record["model_evaluations"]
        wall = time.perf_counter() - start
    figures = {phase: value / iterations for phase, value in totals.items()}
    figures["total"] = wall / iterations
    figures["model_evaluations"] = evaluations / iterations
    return figures


def run(args: argparse.Namespace) -> int:
    import torch

    configs = [a for a in args.arguments if "=" not in a] or list(EMBEDDED)
    args.overrides = [a for a in args.arguments if "=" in a]
    report: list[dict[str, Any]] = []
    for config_path in configs:
        config = load_config(config_path, list(args.overrides))
        reward = config.task.reward or build_task(config.task).reward_name
        s = config.sampling
        results = {m: time_method(config_path, list(args.overrides), m, args.iterations) for m in args.methods}
        ratio = (
            results["vgpo"]["total"] / results["flow_grpo"]["total"] if {"vgpo", "flow_grpo"} <= set(results) else None
        )
        baseline = results.get("flow_grpo")
        setting = (
            f"config {config_path} ({' '.join(args.overrides) or 'no overrides'}): {s.prompts_per_iteration} prompts "
            f"x {s.group_size} samples x {s.num_steps} steps, reward {reward}, "
            f"reward workers {config.task.reward_workers}, torch threads {torch.get_num_threads()}"
        )
        report.append({"setting": setting, "seconds_per_iteration": results, "ratio": ratio})
        if not args.json:
            print(setting)
            print(f"{'method':<15}" + "".join(f"{p:>11}" for p in (*PHASES, "total")) + "  model evals  vs flow_grpo")
            for method, figures in results.items():
                against = f"{figures['total'] / baseline['total']:>10.2f}x" if baseline else ""
                print(
                    f"{method:<15}"
                    + "".join(f"{figures[p]:>10.3f}s" for p in (*PHASES, "total"))
                    + f"{figures['model_evaluations']:>13.0f}{against}"
                )
            if ratio is not None:
                print(f"vgpo / flow_grpo time per iteration: {ratio:.2f}x\n", flush=True)
    if args.json:
        print(json.dumps(report, indent=1))
    elif len(report) > 1:
        print("summary: " + "; ".join(f"{r['setting'].split()[1]} {r['ratio']:.2f}x" for r in report if r["ratio"]))
    return 0
