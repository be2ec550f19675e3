"""The toy gym: every method on the analytic toy (`vgpo.experiments.toy`), tuned and compared as `vgpo study` and
`vgpo tune` compare them on a task, in seconds on a CPU.

    python -m vgpo.experiments.toy_gym --out docs/study/toy_gym [--methods ...] [--seeds 0 1 2] [--override KEY=VALUE]

The toy's trainable weights are one mean per prompt, so it cannot generalise to other prompts: it is scored on its
train prompts, by the policy's exact expected reward (`vgpo.experiments.toy.expected_reward`, the ODE's limit, no
sampling error). What it shows is whether and how fast each method's update climbs a known reward, free of the
task model's noise. The procedure is the gym's:

1. tuning (`vgpo.experiments.tuning`): every method trains ``--tune-iterations`` on each learning rate of
   ``--grid`` with seed 100 and keeps the one with the highest mean training reward over its last 3 iterations;
2. the study: every method at its chosen rate over ``--seeds``, evaluated every ``--eval-every`` iterations.

``--override KEY=VALUE`` (repeatable) changes the toy's settings for the tuning and the study alike, e.g. a
method's own recipe where the toy's defaults were made for Flow-GRPO (DanceGRPO's ``sampling.noise_level=0.3``).

Both run in this process (each job is a few seconds) and write the same folders as `vgpo tune` and `vgpo study`:
``OUT/toy.yaml`` (the toy's settings), ``OUT/tuning/`` and ``OUT/runs/``, ``results.json``, ``tables.md`` and the
study's figures.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from vgpo.config import METHODS, load_config
from vgpo.experiments.study import StudySpec, job_state, prepare, study_tables, summarize
from vgpo.experiments.study_plots import plot_study
from vgpo.experiments.toy import TargetReward, ToyPolicy, ToyTask, expected_reward
from vgpo.experiments.tuning import TuningSpec, check_tuning, choose, parse_grid, point_name
from vgpo.trainer import Trainer

TOY_CONFIG: dict[str, Any] = {
    "sampling": {
        "num_steps": 6,
        "group_size": 8,
        "prompts_per_iteration": 4,
        "eval_num_steps": 3,
        "eval_samples_per_prompt": 1,
    },
    "algorithm": {"clip_range": 0.2, "kl_beta": 0.0},
    "optim": {"micro_batch_size": 32, "learning_rate": 0.05, "ema_decay": None},
    "run": {
        "iterations": 10,
        "eval_every": 1,
        "checkpoint_every": 10,
        "progress": False,
        "tensorboard": False,
        "num_threads": 1,
    },
}
"""The toy's settings (those of the method tests, tests/test_methods.py): 4 train prompts x G = 8, T = 6."""
TOY_GRID = "optim.learning_rate=0.03,0.1,0.3,1.0"


class ToyTrainer(Trainer):
    """A Trainer whose evaluation is the toy's exact expected reward on its train prompts (no sampling)."""

    def evaluate(self, iteration: int) -> dict[str, Any]:
        score = expected_reward(self.policy)  # type: ignore[arg-type]
        return {"score": score, "reward": score}


def run_jobs(out: Path, spec: StudySpec, echo: Callable[[str], None] = print) -> None:
    """Every job of ``spec`` in this process, skipping finished ones (a stopped run starts again: seconds each)."""
    prepare(out, spec)
    for job in spec.jobs():
        run_dir = out / "runs" / job.name
        if job_state(run_dir) == "done":
            echo(f"{job.name}: done earlier, skipped")
            continue
        if run_dir.exists():
            shutil.rmtree(run_dir)
        config = load_config(spec.config, [*spec.overrides, *job.overrides()])
        policy = ToyPolicy()
        ToyTrainer(config, run_dir, policy=policy, task=ToyTask(), reward=TargetReward()).run()
        echo(f"{job.name}: finished, expected reward {expected_reward(policy):.3f}")


def toy_gym(
    out: Path,
    methods: Sequence[str],
    seeds: Sequence[int],
    *,
    grid: str = TOY_GRID,
    tune_iterations: int = 6,
    iterations: int = 10,
    eval_every: int = 1,
    overrides: Sequence[str] = (),
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Tune every method on the toy, then study it over ``seeds``; returns the study's results. ``overrides``
    (``section.key=value``) apply to every run, tuning and study."""
    out.mkdir(parents=True, exist_ok=True)
    config = out / "toy.yaml"
    config.write_text(yaml.safe_dump(TOY_CONFIG, sort_keys=False))
    tuning = TuningSpec(
        str(config), list(overrides), list(methods), parse_grid([grid]), [100], tune_iterations, min(3, tune_iterations)
    )
    check_tuning(tuning)
    for point in tuning.points():
        echo(f"== tuning {point_name(point)}")
        run_jobs(out / "tuning" / point_name(point), tuning.study(point), echo)
    chosen = choose(out / "tuning", tuning)["chosen"]
    spec = StudySpec(
        config=str(config),
        overrides=[
            *overrides,
            f"run.iterations={iterations}",
            f"run.eval_every={eval_every}",
            f"run.checkpoint_every={iterations}",
        ],
        variants=list(methods),
        kl_betas=[0.0],
        seeds=list(seeds),
        method_overrides={m: chosen[m] for m in methods if m in chosen},
    )
    echo("== study")
    run_jobs(out, spec, echo)
    results = summarize(out, spec, "score")
    results["evaluated_on"] = "train-prompt expected"  # the toy has no held-out prompts (see the module's docstring)
    (out / "tables.md").write_text(study_tables(results))
    plot_study(results, out)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--grid", default=TOY_GRID, help=f"the tuning grid (default {TOY_GRID})")
    parser.add_argument("--tune-iterations", type=int, default=6)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--eval-every", type=int, default=1)
    parser.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE", help="a setting for every run (repeatable)"
    )
    args = parser.parse_args(argv)
    toy_gym(
        args.out,
        args.methods,
        args.seeds,
        grid=args.grid,
        tune_iterations=args.tune_iterations,
        iterations=args.iterations,
        eval_every=args.eval_every,
        overrides=args.override,
    )
    print((args.out / "tables.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
