"""Tuning every method of the gym by one procedure, with the same budget: `vgpo tune`.

For each point of a grid of settings (e.g. ``optim.learning_rate=1e-4,3e-4,1e-3``), every method trains a short
run on the train prompts (one study per point, so each is resumable and reuses `vgpo study`'s job runner); a run
evaluates nothing (``run.eval_at_start=false``, ``eval_every=0``, ``eval_at_end=false``) and is scored by its mean
training reward over its last ``last`` iterations, averaged over the tuning seeds. The training reward is the
reward of the policy's own samples on train prompts, so the held-out test prompts are never seen while tuning.
Each method gets the grid point with the highest score (the first of the grid on a tie). Written to ``out``:

    POINT/            the study of one grid point (POINT = key=value[,key=value...])
    tuning.json       the procedure, every (method, point) score and each method's choice
    tuning.md         the same as a table
    settings.json     {method: [overrides]}: what `vgpo study --method-settings` reads

The choice is made on the training reward, which a method that hacks the reward also raises: the study that uses
the settings reports the image-quality columns per seed, which is where such a choice shows.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vgpo.errors import ConfigError
from vgpo.experiments.report import read_metrics
from vgpo.experiments.study import StudySpec, check_spec, run_study


@dataclass(frozen=True)
class TuningSpec:
    """What `vgpo tune` runs."""

    config: str
    overrides: list[str]
    methods: list[str]
    grid: list[tuple[str, list[str]]]
    """(section.key, its values as written) per tuned setting; every combination is a point."""
    seeds: list[int]
    iterations: int
    last: int
    """Iterations, counted from the end, whose training reward scores a run."""

    def points(self) -> list[list[str]]:
        """Every combination of the grid, as override lists, in grid order."""
        keys = [key for key, _ in self.grid]
        return [
            [f"{k}={v}" for k, v in zip(keys, values, strict=True)]
            for values in itertools.product(*(v for _, v in self.grid))
        ]

    def budget(self) -> list[str]:
        """The overrides every tuning run gets: its length, no evaluation, one checkpoint at the end."""
        return [
            f"run.iterations={self.iterations}",
            "run.eval_at_start=false",
            "run.eval_every=0",
            "run.eval_at_end=false",
            f"run.checkpoint_every={self.iterations}",
        ]

    def study(self, point: list[str]) -> StudySpec:
        return StudySpec(
            config=self.config,
            overrides=[*self.overrides, *self.budget(), *point],
            variants=list(self.methods),
            kl_betas=[_kl_beta(self.config, self.overrides)],
            seeds=list(self.seeds),
        )


def _kl_beta(config: str, overrides: Sequence[str]) -> float:
    from vgpo.config import load_config

    return load_config(config, list(overrides)).algorithm.kl_beta


def parse_grid(items: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["optim.learning_rate=1e-4,3e-4"]`` -> ``[("optim.learning_rate", ["1e-4", "3e-4"])]``."""
    grid = []
    for item in items:
        key, sep, values = item.partition("=")
        choices = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or "." not in key or not choices:
            raise ConfigError(
                f"--grid {item!r}: write section.key=value1,value2,... (e.g. optim.learning_rate=1e-4,3e-4)"
            )
        if len(set(choices)) != len(choices):
            raise ConfigError(f"--grid {item!r} lists a value twice")
        grid.append((key.strip(), choices))
    if len({key for key, _ in grid}) != len(grid):
        raise ConfigError("--grid names a setting twice")
    return grid


def check_tuning(spec: TuningSpec) -> TuningSpec:
    if not spec.grid:
        raise ConfigError("vgpo tune needs at least one --grid setting")
    if spec.iterations < 1 or not 1 <= spec.last <= spec.iterations:
        raise ConfigError(
            f"--iterations must be >= 1 and --last in [1, iterations], got {spec.iterations}, {spec.last}"
        )
    for point in spec.points():
        check_spec(spec.study(point))  # every grid value loads before anything runs
    return spec


def point_name(point: Sequence[str]) -> str:
    return ",".join(point)


def run_tuning(
    out: Path, spec: TuningSpec, *, jobs: int = 2, threads: int | None = None, echo: Callable[[str], None] = print
) -> dict[str, str]:
    """Run every point's study (resumable, like `vgpo study`); returns each job's state by "POINT/JOB"."""
    check_tuning(spec)
    states = {}
    for point in spec.points():
        echo(f"== {point_name(point)}")
        for name, state in run_study(
            out / point_name(point), spec.study(point), jobs=jobs, threads=threads, echo=echo
        ).items():
            states[f"{point_name(point)}/{name}"] = state
    return states


def run_score(records: Sequence[dict[str, Any]], iterations: int, last: int) -> float | None:
    """The mean ``reward_mean`` of a run's last ``last`` training iterations; None if it did not reach them all."""
    rewards = {int(r["iteration"]): r.get("reward_mean") for r in records if r.get("kind") == "train"}
    wanted = [rewards.get(i) for i in range(iterations - last + 1, iterations + 1)]
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in wanted):
        return None
    return statistics.fmean(float(v) for v in wanted)  # type: ignore[arg-type]


def choose(out: Path, spec: TuningSpec) -> dict[str, Any]:
    """Score every (method, point) from the run folders, choose each method's point; write tuning.json,
    tuning.md and settings.json; return the tuning record."""
    runs: dict[str, dict[str, list[float | None]]] = {method: {} for method in spec.methods}
    for point in spec.points():
        for job in spec.study(point).jobs():
            records = read_metrics(out / point_name(point) / "runs" / job.name)
            runs[job.variant].setdefault(point_name(point), []).append(run_score(records, spec.iterations, spec.last))
    table: dict[str, dict[str, float | None]] = {}
    chosen: dict[str, list[str]] = {}
    for method in spec.methods:
        table[method] = {}
        for point in spec.points():
            values = [v for v in runs[method].get(point_name(point), []) if v is not None]
            complete = len(values) == len(spec.seeds)
            table[method][point_name(point)] = statistics.fmean(values) if complete else None
        finished = {name: value for name, value in table[method].items() if value is not None}
        if finished:
            best = max(finished, key=lambda name: finished[name])  # max keeps the first of equal scores
            chosen[method] = best.split(",")
    record = {"spec": asdict(spec), "scores": table, "chosen": chosen}
    out.mkdir(parents=True, exist_ok=True)
    (out / "tuning.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "settings.json").write_text(json.dumps(chosen, indent=1) + "\n")
    (out / "tuning.md").write_text(tuning_table(record))
    return record


def tuning_table(record: dict[str, Any]) -> str:
    spec = record["spec"]
    points = list(next(iter(record["scores"].values()), {}).keys())
    head = (
        f"Score: mean training reward (train prompts) over iterations {spec['iterations'] - spec['last'] + 1}-"
        f"{spec['iterations']} of {spec['iterations']}-iteration runs, seeds {spec['seeds']}; the chosen point in bold.\n\n"
        "| method | " + " | ".join(points) + " |\n|---|" + "---|" * len(points) + "\n"
    )
    rows = []
    for method, by_point in record["scores"].items():
        best = point_name(record["chosen"].get(method, []))
        cells = []
        for point, value in by_point.items():
            text = "not run" if value is None else f"{value:.4f}"
            cells.append(f"**{text}**" if point == best else text)
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"
