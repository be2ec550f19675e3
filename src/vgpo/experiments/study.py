"""Studies, the method gym: methods x KL settings x seeds of one preset, run as a resumable job list, summarised
over seeds, and compared at equal compute.

A study folder holds
    study.json       the spec (config, overrides, methods, kl values, seeds) and each job's state
    runs/NAME/       one ordinary training run per job (NAME = METHOD-klBETA-seedSEED), resumable on its own
    logs/NAME.log    each job's stdout and stderr
    results.json     per condition (method, kl): every metric at every evaluation, mean / std / n over seeds;
                     training curves (reward, within-group std, zero-spread fraction) and the instant reward by step;
                     the compute spent up to each evaluation and the headline metric's gain on the compute axes
    *.png            the paper's figures in miniature and the gain by compute (see :mod:`vgpo.experiments.study_plots`)

Compute, per run, from its metrics.jsonl: the training seconds (the sum of an iteration's timed phases: sample,
reward, advantage, update; evaluation and checkpoints are not counted) and the model evaluations (velocity
evaluations, one per sample per call, sampling and update; evaluation not counted), summed over iterations. An
evaluation at iteration i is placed at the compute of iterations 1..i (0 for the base model's).

Running the same study command again continues it: finished jobs are skipped, interrupted ones are resumed from
their last checkpoint, jobs killed before their first checkpoint start again. Naming more variants, KL values or
seeds grows the study: only the new jobs run. Each job is a `vgpo train` subprocess
(one torch thread each when several run at once) that dies with the study (PR_SET_PDEATHSIG), so a killed study
leaves no orphan writing into a run folder that the next invocation resumes.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vgpo.config import VARIANTS, load_config
from vgpo.errors import ConfigError
from vgpo.experiments.report import read_metrics
from vgpo.methods.registry import required_overrides

SPEC_FILE = "study.json"
RESULTS_FILE = "results.json"
MAX_JOBS = 8

# Metrics of an evaluation line that the study summarises (those present in a run are kept).
EVAL_PREFIXES = ("accuracy", "score", "reward", "quality/", "diversity")
# Training-line metrics summarised as curves over iterations.
TRAIN_KEYS = ("reward_mean", "group_reward_std", "zero_spread_fraction", "advantage_abs_mean")
# The gym's headline metric: the first of these that the study's evaluations report.
HEADLINE_METRICS = ("accuracy", "score", "reward")
ABLATION_METRICS = ("accuracy", "score", "reward")
QUALITY_METRICS = ("quality/sharpness", "quality/noise", "quality/clipped", "quality/blockiness", "diversity")
PER_SEED_METRICS = (
    "score",
    "quality/clipped",
    "quality/saturation",
    "quality/background_saturation",
    "quality/background_lightness",
    "diversity",
)
"""Per seed, what the reward does not see (a study run before the background metrics existed shows "-")."""
BASELINE_METHOD = "flow_grpo"
COMPUTE_AXES = ("seconds", "model_evaluations")


@dataclass(frozen=True)
class StudyJob:
    """One training run of the study."""

    variant: str
    kl_beta: float
    seed: int
    settings: tuple[str, ...] = ()
    """The method's own overrides (`StudySpec.method_overrides`), applied after everything else."""

    @property
    def condition(self) -> str:
        """The name of the (variant, kl) cell this job is one seed of."""
        return f"{self.variant}-kl{self.kl_beta:g}"

    @property
    def name(self) -> str:
        return f"{self.condition}-seed{self.seed}"

    def overrides(self) -> list[str]:
        """The job's own settings, after the study's: its method, KL, seed, what the method cannot run without
        (`vgpo.methods.registry.required_settings`, e.g. distinct initial noise for the ODE-sampled methods), and
        last the method's own settings (e.g. its tuned learning rate, `vgpo tune`)."""
        return [
            f"algorithm.variant={self.variant}",
            f"algorithm.kl_beta={self.kl_beta!r}",
            f"run.seed={self.seed}",
            *required_overrides(self.variant),
            *self.settings,
        ]


@dataclass
class StudySpec:
    """What a study runs; stored in study.json so that a re-run can check it continues the same study."""

    config: str
    overrides: list[str]
    variants: list[str]
    kl_betas: list[float]
    seeds: list[int]
    method_overrides: dict[str, list[str]] = field(default_factory=dict)
    """Per method, overrides applied to its jobs only, after all others (`--method-settings`, e.g. the file
    `vgpo tune` writes). Methods not named here run at the study's settings."""

    def jobs(self) -> list[StudyJob]:
        # seeds outermost: a study stopped half-way has every condition at its first seeds, not some conditions whole
        return [
            StudyJob(v, k, s, tuple(self.method_overrides.get(v, ())))
            for s in self.seeds
            for k in self.kl_betas
            for v in self.variants
        ]


def read_method_settings(path: Path | None, methods: Sequence[str]) -> dict[str, list[str]]:
    """The per-method overrides of a JSON file {method: ["section.key=value", ...]} (`vgpo tune`'s settings.json),
    kept for the ``methods`` a study runs; {} without a file. A malformed file is a named error."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"--method-settings {path} is not valid JSON ({error})") from error
    well_formed = isinstance(data, dict) and all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(o, str) and "=" in o for o in v)
        for k, v in data.items()
    )
    if not well_formed:
        raise ConfigError(
            f"--method-settings {path} must map each method to a list of section.key=value overrides, e.g. "
            '{"nft": ["optim.learning_rate=0.001"]}'
        )
    return {method: list(data[method]) for method in methods if data.get(method)}


def check_spec(spec: StudySpec) -> StudySpec:
    """Validate a spec before anything runs: known variants, KL >= 0, distinct seeds, a loadable config."""
    unknown = [v for v in spec.variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    if any(not math.isfinite(k) or k < 0 for k in spec.kl_betas):
        raise ConfigError(f"--kl values must be finite and >= 0, got {spec.kl_betas}")
    for name, values in (("variants", spec.variants), ("kl", spec.kl_betas), ("seeds", spec.seeds)):
        if not values:
            raise ConfigError(f"a study needs at least one of --{name}")
        if len(set(values)) != len(values):
            raise ConfigError(f"--{name} lists a value twice: {values}")
    stray = sorted(set(spec.method_overrides) - set(spec.variants))
    if stray:
        raise ConfigError(f"method settings name method(s) {stray} that the study does not run ({spec.variants})")
    load_config(spec.config, spec.overrides)  # a bad preset or override fails here, not in N subprocesses
    for method, settings in spec.method_overrides.items():
        try:
            load_config(spec.config, [*spec.overrides, *settings])
        except ConfigError as error:
            raise ConfigError(f"the settings of method {method!r} ({settings}) are not valid: {error}") from error
    return spec


def prepare(out: Path, spec: StudySpec, subset: bool = False) -> StudySpec:
    """Create the study folder, or check that an existing one holds the same study.

    A study may grow: a spec that names more variants, KL values or seeds than the saved one (same config and
    overrides, nothing dropped) replaces it, and the new jobs run beside the finished ones. With ``subset``
    (summarising part of a study) the spec may name fewer instead."""
    check_spec(spec)
    path = out / SPEC_FILE
    if path.is_file():
        state = json.loads(path.read_text())
        saved = {"method_overrides": {}, **state["spec"]}  # studies written before method settings had none
        if subset and _is_part_of(asdict(spec), saved):
            return spec
        if not subset and saved != asdict(spec) and _is_part_of(saved, asdict(spec)):
            _write_json(path, {**state, "spec": asdict(spec)})  # grown: the finished jobs stay finished
            return spec
        if saved != asdict(spec):
            raise ConfigError(
                f"{out} holds another study ({path}: {saved}); continue it with the same arguments (or more "
                "variants, KL values or seeds) or pick another --out"
            )
    else:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(path, {"spec": asdict(spec), "jobs": {}})
    return spec


def _is_part_of(spec: dict[str, Any], saved: dict[str, Any]) -> bool:
    """Whether ``spec`` is a part of ``saved``: the same config and overrides, no more methods, KL values or seeds,
    and the same settings for each method both name (a method's settings are part of what its runs are)."""
    same = all(spec[key] == saved[key] for key in ("config", "overrides"))
    own = all(
        spec["method_overrides"].get(m, []) == saved["method_overrides"].get(m, [])
        for m in set(spec["variants"]) & set(saved["variants"])
    )
    return same and own and all(set(spec[key]) <= set(saved[key]) for key in ("variants", "kl_betas", "seeds"))


# ----------------------------------------------------------------------------------------------------------
# Job states, read from the run folders themselves (the truth after any crash).


def job_state(run_dir: Path) -> str:
    """``done`` (its final evaluation is logged and checkpointed), ``partial`` (a checkpoint to resume from) or
    ``new``."""
    config_path = run_dir / "config.yaml"
    checkpoints = run_dir / "checkpoints"
    if not config_path.is_file():
        return "new"
    run = load_config(config_path).run
    iterations = run.iterations
    final = checkpoints / f"iter_{iterations:06d}" / "checkpoint.json"
    evaluated = not run.evaluates_after(iterations) or any(
        r.get("kind") == "eval" and r.get("iteration") == iterations for r in read_metrics(run_dir)
    )
    if final.is_file() and evaluated:
        return "done"
    if checkpoints.is_dir() and any((p / "checkpoint.json").is_file() for p in checkpoints.iterdir()):
        return "partial"
    return "new"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM this child when the study process dies, even by SIGKILL."""
    with contextlib.suppress(OSError):  # not Linux: a killed study may leave its jobs running
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


BASE_EVAL_NEUTRAL = ("algorithm.", "optim.", "sampling.share_initial_noise=")
"""Settings that act only from the first rollout or update on: two runs of one seed that differ in nothing else
evaluate the same base model on the same noise at iteration 0 (the LoRA starts at B = 0, and the evaluation's
noise comes from the seed alone), so a study evaluates it once per seed (`base_eval_source`)."""


def base_eval_source(spec: StudySpec, job: StudyJob) -> StudyJob | None:
    """The job whose iteration-0 evaluation ``job`` reuses instead of repeating it: the first job of its seed, when
    both differ from the study's settings only in :data:`BASE_EVAL_NEUTRAL` ones; else None (it evaluates itself).
    """
    first = next(j for j in spec.jobs() if j.seed == job.seed)

    def neutral(j: StudyJob) -> bool:
        return all(o.startswith(BASE_EVAL_NEUTRAL) for o in (*required_overrides(j.variant), *j.settings))

    return first if first != job and neutral(first) and neutral(job) else None


def job_command(
    spec: StudySpec, job: StudyJob, run_dir: Path, state: str, threads: int | None, share_base_eval: bool = False
) -> list[str]:
    """The `vgpo train` command line of a job in its current state. ``share_base_eval``: a job with a
    :func:`base_eval_source` skips its own iteration-0 evaluation (the summary takes the source's)."""
    base = [sys.executable, "-m", "vgpo.cli", "train"]
    quiet = ["run.progress=false"] + ([f"run.num_threads={threads}"] if threads is not None else [])
    if state == "partial":
        return [*base, "--resume", str(run_dir), *quiet]
    shared = ["run.eval_at_start=false"] if share_base_eval and base_eval_source(spec, job) is not None else []
    return [*base, spec.config, *spec.overrides, *job.overrides(), *shared, *quiet, "--out", str(run_dir)]


def run_study(
    out: Path,
    spec: StudySpec,
    *,
    jobs: int = 2,
    threads: int | None = None,
    share_base_eval: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, str]:
    """Run every unfinished job, ``jobs`` at a time; returns each job's final state (``done`` or ``failed``).

    threads: torch threads per job (default: 1 when several jobs run at once, else torch's default).
    share_base_eval: evaluate the base model once per seed (:func:`base_eval_source`), not once per job.
    """
    if not 1 <= jobs <= MAX_JOBS:
        raise ConfigError(f"--jobs must be in [1, {MAX_JOBS}], got {jobs}")
    if threads is None and jobs > 1:
        threads = 1
    prepare(out, spec)
    (out / "logs").mkdir(exist_ok=True)
    pending = list(spec.jobs())
    states: dict[str, str] = {}
    running: dict[str, tuple[subprocess.Popen, Any]] = {}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                job = pending.pop(0)
                run_dir = out / "runs" / job.name
                state = job_state(run_dir)
                if state == "done":
                    states[job.name] = "done"
                    echo(f"{job.name}: done earlier, skipped")
                    continue
                if state == "new" and run_dir.exists():
                    shutil.rmtree(run_dir)  # killed before its first checkpoint: nothing worth keeping
                log = (out / "logs" / f"{job.name}.log").open("a")
                command = job_command(spec, job, run_dir, state, threads, share_base_eval)
                log.write(f"$ {' '.join(command)}\n")
                log.flush()
                echo(f"{job.name}: {'resuming' if state == 'partial' else 'starting'}")
                process = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent, env=_child_env()
                )
                running[job.name] = (process, log)
            for name, (process, log) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                log.close()
                del running[name]
                states[name] = "done" if code == 0 else "failed"
                echo(f"{name}: {'finished' if code == 0 else f'failed (exit {code}), see logs/{name}.log'}")
                _record_state(out, name, states[name])
            time.sleep(0.2)
    finally:
        for process, log in running.values():  # interrupted (Ctrl-C): stop the jobs, they resume next time
            process.terminate()
            process.wait()
            log.close()
    return states


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _record_state(out: Path, name: str, state: str) -> None:
    path = out / SPEC_FILE
    data = json.loads(path.read_text())
    data["jobs"][name] = state
    _write_json(path, data)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------
# Summary over seeds.


def _stats(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample std (0 for one seed), min, max and n of the finite values."""
    finite = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not finite:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {
        "mean": statistics.fmean(finite),
        "std": statistics.stdev(finite) if len(finite) > 1 else 0.0,
        "min": min(finite),
        "max": max(finite),
        "n": len(finite),
    }


def _eval_keys(record: dict[str, Any]) -> list[str]:
    return [k for k, v in record.items() if k.startswith(EVAL_PREFIXES) and isinstance(v, int | float)]


def summarize(out: Path, spec: StudySpec, metric: str | None = None) -> dict[str, Any]:
    """Summarise every condition over its seeds from the runs' metrics.jsonl; write results.json; return it.
    ``metric``: the gym's headline metric (None: the first of HEADLINE_METRICS the evaluations report)."""
    conditions: dict[str, Any] = {}
    for job in spec.jobs():
        records = _with_base_eval(out, spec, job, read_metrics(out / "runs" / job.name))
        cell = conditions.setdefault(
            job.condition,
            {"variant": job.variant, "kl_beta": job.kl_beta, "settings": list(job.settings), "seeds": [], "runs": {}},
        )
        if not records:
            continue
        cell["seeds"].append(job.seed)
        evals = [r for r in records if r.get("kind") == "eval"]
        train = [r for r in records if r.get("kind") == "train"]
        cell["runs"][str(job.seed)] = {"eval": evals, "train": train}
    per_condition = {}
    for name, cell in conditions.items():
        runs = list(cell.pop("runs").values())
        per_condition[name] = runs
        cell["eval"] = _over_seeds([run["eval"] for run in runs], None)
        cell["train"] = _over_seeds([run["train"] for run in runs], TRAIN_KEYS)
        cell["instant_reward_by_step"] = _instant_by_step([run["train"] for run in runs])
        cell["final"] = _final(cell["eval"])
        cell["gain"] = _gains([run["eval"] for run in runs], cell["eval"])
    gym = _gym(conditions, per_condition, metric)
    for name, cell in conditions.items():
        cell["per_seed"] = _per_seed(cell["seeds"], per_condition[name], gym["metric"])
    results = {"spec": asdict(spec), "conditions": conditions, "gym": gym}
    _write_json(out / RESULTS_FILE, results)
    return results


# ----------------------------------------------------------------------------------------------------------
# The gym: gains against compute.


def _with_base_eval(out: Path, spec: StudySpec, job: StudyJob, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A run's records, with its :func:`base_eval_source`'s iteration-0 evaluation (marked ``shared_from``) where the
    run skipped its own."""
    source = base_eval_source(spec, job)
    if not records or source is None or any(r.get("kind") == "eval" and r.get("iteration") == 0 for r in records):
        return records
    base = [r for r in read_metrics(out / "runs" / source.name) if r.get("kind") == "eval" and r.get("iteration") == 0]
    return [{**base[0], "shared_from": source.name}, *records] if base else records


def cumulative_compute(train: Sequence[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """The compute a run spent up to and including each training iteration, {iteration: {"seconds": s,
    "model_evaluations": m}}, with iteration 0 (the base model) at zero. Seconds: the sum of the iteration's
    timed phases (`seconds`); model evaluations: its `model_evaluations` (0 where a line lacks them)."""
    totals = {"seconds": 0.0, "model_evaluations": 0.0}
    out = {0: dict(totals)}
    for record in sorted(train, key=lambda r: int(r["iteration"])):
        totals["seconds"] += sum(float(v) for v in record.get("seconds", {}).values())
        totals["model_evaluations"] += float(record.get("model_evaluations", 0))
        out[int(record["iteration"])] = dict(totals)
    return out


def _compute_at(compute: dict[int, dict[str, float]], iteration: int) -> dict[str, float] | None:
    """The compute up to ``iteration``: its own entry, or the last logged iteration before it."""
    earlier = [i for i in compute if i <= iteration]
    return compute[max(earlier)] if earlier else None


def _gym(
    conditions: dict[str, Any], per_condition: dict[str, list[dict[str, Any]]], metric: str | None = None
) -> dict[str, Any]:
    """Per condition: compute at each shared evaluation, the headline metric's per-seed gain on each evaluation
    (a curve over iterations placed on both compute axes), the compute of the whole run, and the compute it needed
    to reach the baseline's (Flow-GRPO's, same KL) final mean gain. Returns the gym's header (metric, targets)."""
    if metric is None:
        metric = next((m for m in HEADLINE_METRICS if any(m in c["gain"] for c in conditions.values())), None)
    elif conditions and not any(metric in c["eval"] for c in conditions.values()):
        raise ConfigError(f"--metric {metric}: no evaluation of this study reports it")
    for name, cell in conditions.items():
        runs = per_condition[name]
        computes = [cumulative_compute(run["train"]) for run in runs]
        iterations = cell["eval"][metric]["iterations"] if metric in cell["eval"] else []
        curve: dict[str, Any] = {"iterations": iterations, "gain": {"mean": [], "std": [], "n": []}}
        for axis in COMPUTE_AXES:
            curve[axis] = {"mean": [], "std": [], "n": []}
        for iteration in iterations:
            gains: list[float] = []
            spent: dict[str, list[float]] = {axis: [] for axis in COMPUTE_AXES}
            for run, compute in zip(runs, computes, strict=True):
                at = {int(r["iteration"]): r.get(metric) for r in run["eval"]}
                start, value = at.get(iterations[0]), at.get(iteration)
                if isinstance(start, int | float) and isinstance(value, int | float):
                    gains.append(value - start)
                used = _compute_at(compute, iteration)
                for axis in COMPUTE_AXES:
                    if used is not None:
                        spent[axis].append(used[axis])
            for key, values in (("gain", gains), *spent.items()):
                stats = _stats(values)
                for stat in ("mean", "std", "n"):
                    curve[key][stat].append(stats[stat])
        total = {axis: _stats([c[max(c)][axis] for c in computes if len(c) > 1]) for axis in COMPUTE_AXES}
        cell["compute"] = {"metric": metric, "curve": curve, "total": total}
    targets = {}
    for name, cell in conditions.items():
        baseline = f"{BASELINE_METHOD}-kl{cell['kl_beta']:g}"
        gain = conditions.get(baseline, {}).get("gain", {}).get(metric) if metric is not None else None
        target = gain["mean"] if gain is not None and math.isfinite(gain["mean"]) else None
        targets[baseline] = target
        cell["compute"]["to_baseline_gain"] = _to_target(per_condition[name], metric, target, baseline)
    return {"metric": metric, "baseline": BASELINE_METHOD, "targets": targets}


def _to_target(runs: list[dict[str, Any]], metric: str | None, target: float | None, baseline: str) -> dict[str, Any]:
    """The compute each seed spent until its first evaluation whose gain over its first evaluation reaches
    ``target`` (checked at the evaluations only, so it is an upper bound by at most eval_every iterations)."""
    out: dict[str, Any] = {"baseline": baseline, "target": target, "seeds": len(runs), "reached": 0}
    if metric is None or target is None or target <= 0:  # no gain to reach: every first evaluation would "reach" it
        return out
    hits: dict[str, list[float]] = {"iteration": [], **{axis: [] for axis in COMPUTE_AXES}}
    for run in runs:
        evals = sorted(
            (r for r in run["eval"] if isinstance(r.get(metric), int | float)), key=lambda r: int(r["iteration"])
        )
        if len(evals) < 2:
            continue
        compute = cumulative_compute(run["train"])
        for record in evals[1:]:
            if record[metric] - evals[0][metric] >= target:
                used = _compute_at(compute, int(record["iteration"]))
                if used is not None:
                    hits["iteration"].append(float(record["iteration"]))
                    for axis in COMPUTE_AXES:
                        hits[axis].append(used[axis])
                break
    out["reached"] = len(hits["iteration"])
    out.update({key: _stats(values) for key, values in hits.items()})
    return out


def _mean_std(stats: dict[str, Any], digits: int = 3, sign: str = "") -> str:
    if not stats or not stats.get("n"):
        return "-"
    return f"{stats['mean']:{sign}.{digits}f} ± {stats['std']:.{digits}f}"


def gym_table(results: dict[str, Any]) -> str:
    """The gym's table: per condition the headline metric's final gain (mean ± std over seeds (n)), the compute of
    the whole run, and the compute needed to reach the baseline's final mean gain (or "not reached")."""
    gym = results.get("gym", {})
    metric = gym.get("metric")
    if metric is None:
        return "(no evaluation metric with a gain: the runs need at least two evaluations)\n"
    head = (
        f"| condition | final gain in {metric} | training seconds | model evaluations | "
        f"to reach {gym.get('baseline')}'s final gain: seconds | model evaluations | iteration | seeds reaching |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for name, cell in results["conditions"].items():
        gain = cell["gain"].get(metric, {})
        compute = cell.get("compute", {})
        total = compute.get("total", {})
        reach = compute.get("to_baseline_gain", {})
        gain_text = f"{_mean_std(gain, sign='+')} ({gain.get('n', 0)})" if gain else "-"
        if reach.get("target") is None:
            reach_cells = ["no baseline in this study"] * 3 + ["-"]
        elif reach["target"] <= 0:
            reach_cells = [f"{reach['baseline']} gained nothing"] * 3 + ["-"]
        elif not reach.get("reached"):
            reach_cells = ["not reached"] * 3 + [f"0/{reach['seeds']}"]
        else:
            reach_cells = [
                _mean_std(reach["seconds"], 1),
                _mean_std(reach["model_evaluations"], 0),
                _mean_std(reach["iteration"], 1),
                f"{reach['reached']}/{reach['seeds']}",
            ]
        cells = [gain_text, _mean_std(total.get("seconds", {}), 1), _mean_std(total.get("model_evaluations", {}), 0)]
        rows.append(f"| {name} | " + " | ".join(cells + reach_cells) + " |")
    targets = ", ".join(
        f"{name}: {value:+.3f}" if value is not None else f"{name}: none in this study"
        for name, value in gym.get("targets", {}).items()
    )
    note = (
        f"\nTarget (the baseline's final mean gain in {metric}, per KL): {targets}. Seconds: training phases "
        "(sample, reward, advantage, update) summed over iterations, evaluation excluded; model evaluations: velocity "
        "evaluations per sample, sampling and update. A target counts as reached at the first evaluation whose gain "
        "over the seed's first evaluation is at least the target (checked at evaluations only).\n"
    )
    return head + "\n".join(rows) + "\n" + note


def _over_seeds(per_seed: list[list[dict[str, Any]]], keys: Sequence[str] | None) -> dict[str, Any]:
    """{metric: {"iterations": [...], "mean": [...], "std": [...], "n": [...]}} over the iterations all seeds share."""
    by_iteration: dict[int, list[dict[str, Any]]] = {}
    for records in per_seed:
        for record in records:
            by_iteration.setdefault(int(record["iteration"]), []).append(record)
    shared = sorted(i for i, rows in by_iteration.items() if len(rows) == len(per_seed))
    names = (
        list(keys) if keys is not None else sorted({k for rows in by_iteration.values() for k in _eval_keys(rows[0])})
    )
    curves: dict[str, Any] = {}
    for name in names:
        stats = [_stats([row[name] for row in by_iteration[i] if name in row]) for i in shared]
        if not any(s["n"] for s in stats):
            continue
        curves[name] = {
            "iterations": shared,
            "mean": [s["mean"] for s in stats],
            "std": [s["std"] for s in stats],
            "n": [s["n"] for s in stats],
        }
    return curves


def _per_seed(seeds: Sequence[int], runs: list[dict[str, Any]], metric: str | None) -> dict[str, Any]:
    """Each seed's last evaluation (every metric, image quality included) and its gain in ``metric`` over its first
    evaluation: what a mean over seeds can hide, e.g. one seed that burns its pixels to white."""
    table = {}
    for seed, run in zip(seeds, runs, strict=True):
        evals = sorted(run["eval"], key=lambda r: int(r["iteration"]))
        if not evals:
            continue
        last = evals[-1]
        row: dict[str, Any] = {"iteration": int(last["iteration"])}
        row.update({key: last[key] for key in _eval_keys(last)})
        first = evals[0].get(metric) if metric is not None else None
        if len(evals) > 1 and isinstance(first, int | float) and isinstance(last.get(metric), int | float):
            row["gain"] = last[metric] - first
        table[str(seed)] = row
    return table


def per_seed_table(results: dict[str, Any], metrics: Sequence[str]) -> str:
    """Markdown: one row per (condition, seed) with the headline metric's gain and ``metrics`` at the seed's last
    evaluation ("-" where a run does not report one)."""
    headline = results.get("gym", {}).get("metric") or "metric"
    head = (
        f"| condition | seed | iteration | gain in {headline} | "
        + " | ".join(metrics)
        + " |\n|"
        + "---|" * (4 + len(metrics))
        + "\n"
    )
    rows = []
    for name, cell in results["conditions"].items():
        for seed, row in cell.get("per_seed", {}).items():
            gain = f"{row['gain']:+.3f}" if "gain" in row else "-"
            values = [f"{row[m]:.3f}" if isinstance(row.get(m), int | float) else "-" for m in metrics]
            rows.append(f"| {name} | {seed} | {row['iteration']} | {gain} | " + " | ".join(values) + " |")
    return head + "\n".join(rows) + "\n"


def _instant_by_step(per_seed: list[list[dict[str, Any]]]) -> dict[str, list[float]]:
    """The mean instant reward of each step over the second half of training, mean and std over seeds."""
    means = []
    for train in per_seed:
        rows = [r["instant_reward_by_step"] for r in train[len(train) // 2 :] if "instant_reward_by_step" in r]
        if rows:
            means.append([statistics.fmean(column) for column in zip(*rows, strict=True)])
    if not means:
        return {"mean": [], "std": []}
    stats = [_stats(column) for column in zip(*means, strict=True)]
    return {"mean": [s["mean"] for s in stats], "std": [s["std"] for s in stats]}


def _final(curves: dict[str, Any]) -> dict[str, Any]:
    """Each metric at the first and the last shared evaluation: the rows of the ablation and quality tables."""
    table = {}
    for name, curve in curves.items():
        if curve["iterations"]:
            table[name] = {
                "start": curve["mean"][0],
                "mean": curve["mean"][-1],
                "std": curve["std"][-1],
                "n": curve["n"][-1],
                "iteration": curve["iterations"][-1],
            }
    return table


def _gains(per_seed: list[list[dict[str, Any]]], curves: dict[str, Any]) -> dict[str, Any]:
    """Each metric's change from the first to the last shared evaluation, taken per seed (a paired difference:
    a seed's base evaluation and its final one share the evaluation noise draws), then mean / std / n over seeds."""
    gains = {}
    for name, curve in curves.items():
        if len(curve["iterations"]) < 2:
            continue
        first, last = curve["iterations"][0], curve["iterations"][-1]
        differences = []
        for records in per_seed:
            at = {int(r["iteration"]): r.get(name) for r in records}
            start, end = at.get(first), at.get(last)
            if isinstance(start, int | float) and isinstance(end, int | float):
                differences.append(end - start)
        gains[name] = {**_stats(differences), "from": first, "to": last}
    return gains


def markdown_tables(results: dict[str, Any], metrics: Sequence[str], key: str = "final") -> str:
    """The ablation / quality table: one row per condition, 'mean ± std (n)' at the last shared evaluation
    (``key="gain"``: the per-seed change since the first shared evaluation, the base model's)."""
    present = [m for m in metrics if any(m in c.get(key, {}) for c in results["conditions"].values())]
    head = "| condition | iteration | " + " | ".join(present) + " |\n|---|---|" + "---|" * len(present) + "\n"
    rows = []
    for name, cell in results["conditions"].items():
        table = cell.get(key, {})
        if key == "gain":
            iterations = {f"{value['from']} -> {value['to']}" for value in table.values()}
        else:
            iterations = {str(value["iteration"]) for value in table.values()}
        cells = [", ".join(sorted(iterations)) or "-"]
        for metric in present:
            value = table.get(metric)
            sign = "+" if key == "gain" else ""
            cells.append("-" if value is None else f"{value['mean']:{sign}.3f} ± {value['std']:.3f} ({value['n']})")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def study_tables(results: dict[str, Any]) -> str:
    """tables.md of a study: the gym, the ablation, the gains, image quality, and per seed what the reward misses."""
    reported = any(m in cell["final"] for cell in results["conditions"].values() for m in QUALITY_METRICS)
    quality = "\n## Image quality and diversity\n\n" + markdown_tables(results, QUALITY_METRICS) if reported else ""
    return (
        "## Methods at equal compute (the gym)\n\n"
        + gym_table(results)
        + "\n## Ablation (last shared evaluation, mean ± std over seeds (n))\n\n"
        + markdown_tables(results, ABLATION_METRICS)
        + "\n## Gain over the base model (per seed: last minus first shared evaluation; mean ± std (n))\n\n"
        + markdown_tables(results, ABLATION_METRICS, key="gain")
        + quality
        + "\n## Per seed, at its last evaluation: what the reward does not see\n\n"
        + per_seed_table(results, PER_SEED_METRICS)
    )
