"""The gym's tuning (`vgpo tune`) and per-method settings in `vgpo study`: one procedure and budget per method,
scored on the training reward, chosen per method, and each method's settings reaching only its own jobs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vgpo.config import load_config
from vgpo.errors import ConfigError
from vgpo.experiments.study import (
    StudySpec,
    job_command,
    job_state,
    per_seed_table,
    prepare,
    read_method_settings,
    summarize,
)
from vgpo.experiments.tuning import TuningSpec, check_tuning, choose, parse_grid, run_score
from vgpo.models.tiny import TinyConfig, TinyFlowModel, save_model


def write_train_run(folder: Path, rewards: list[float]) -> None:
    folder.mkdir(parents=True)
    lines = [{"kind": "train", "iteration": i, "reward_mean": r} for i, r in enumerate(rewards, start=1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.fixture
def preset(tmp_path: Path) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text("task:\n  name: compositional\n")
    return path


def test_a_run_is_scored_by_its_last_training_rewards() -> None:
    records = [{"kind": "train", "iteration": i, "reward_mean": 0.1 * i} for i in range(1, 7)]
    records.append({"kind": "eval", "iteration": 6, "reward": 9.0})  # evaluations do not count
    assert run_score(records, iterations=6, last=3) == pytest.approx((0.4 + 0.5 + 0.6) / 3)
    assert run_score(records[:5], iterations=6, last=3) is None  # stopped before the end: no score
    assert run_score([*records[:5], {"kind": "train", "iteration": 6, "reward_mean": float("nan")}], 6, 3) is None


def test_each_method_gets_its_best_grid_point_from_the_runs(tmp_path: Path, preset: Path) -> None:
    spec = TuningSpec(
        config=str(preset),
        overrides=["run.tensorboard=false"],
        methods=["flow_grpo", "nft", "awm"],
        grid=parse_grid(["optim.learning_rate=1e-4,1e-3"]),
        seeds=[100, 101],
        iterations=4,
        last=2,
    )
    check_tuning(spec)
    # flow_grpo: best at 1e-3 (mean of seeds' last two: 0.55 vs 0.35); nft: best at 1e-4;
    # awm: equal scores -> the first grid point; every folder is the point's study, the runs named as a study's
    rewards = {
        ("flow_grpo", "1e-4"): ([0.3, 0.3, 0.3, 0.4], [0.3, 0.3, 0.3, 0.4]),
        ("flow_grpo", "1e-3"): ([0.3, 0.4, 0.5, 0.6], [0.3, 0.4, 0.5, 0.6]),
        ("nft", "1e-4"): ([0.3, 0.4, 0.8, 0.8], [0.3, 0.4, 0.6, 0.6]),
        ("nft", "1e-3"): ([0.3, 0.4, 0.5, 0.5], [0.3, 0.4, 0.5, 0.5]),
        ("awm", "1e-4"): ([0.3, 0.3, 0.5, 0.5], [0.3, 0.3, 0.5, 0.5]),
        ("awm", "1e-3"): ([0.3, 0.3, 0.5, 0.5], [0.3, 0.3, 0.5, 0.5]),
    }
    for (method, rate), per_seed in rewards.items():
        for seed, values in zip((100, 101), per_seed, strict=True):
            write_train_run(tmp_path / f"optim.learning_rate={rate}" / "runs" / f"{method}-kl0-seed{seed}", values)
    record = choose(tmp_path, spec)
    assert record["scores"]["flow_grpo"] == pytest.approx(
        {"optim.learning_rate=1e-4": 0.35, "optim.learning_rate=1e-3": 0.55}
    )
    assert record["scores"]["nft"]["optim.learning_rate=1e-4"] == pytest.approx(0.7)
    settings = json.loads((tmp_path / "settings.json").read_text())
    assert settings == {
        "flow_grpo": ["optim.learning_rate=1e-3"],
        "nft": ["optim.learning_rate=1e-4"],
        "awm": ["optim.learning_rate=1e-4"],
    }
    assert "| flow_grpo | 0.3500 | **0.5500** |" in (tmp_path / "tuning.md").read_text()
    # every tuning run has the same budget and evaluates nothing
    config = load_config(spec.config, spec.study(spec.points()[1]).overrides)
    assert config.run.iterations == 4 and config.optim.learning_rate == 1e-3
    assert not any(config.run.evaluates_after(i) for i in range(1, 5)) and not config.run.eval_at_start


def test_a_point_missing_a_seed_is_not_chosen(tmp_path: Path, preset: Path) -> None:
    spec = TuningSpec(str(preset), [], ["vgpo"], parse_grid(["optim.learning_rate=1e-4,1e-3"]), [0, 1], 2, 1)
    write_train_run(tmp_path / "optim.learning_rate=1e-4" / "runs" / "vgpo-kl0-seed0", [0.1, 0.2])
    write_train_run(tmp_path / "optim.learning_rate=1e-4" / "runs" / "vgpo-kl0-seed1", [0.1, 0.2])
    write_train_run(tmp_path / "optim.learning_rate=1e-3" / "runs" / "vgpo-kl0-seed0", [0.1, 0.9])  # seed 1 missing
    record = choose(tmp_path, spec)
    assert record["scores"]["vgpo"]["optim.learning_rate=1e-3"] is None
    assert record["chosen"] == {"vgpo": ["optim.learning_rate=1e-4"]}


def test_bad_grids_are_named(preset: Path) -> None:
    for bad in ("learning_rate=1e-4", "optim.learning_rate", "optim.learning_rate=1e-4,1e-4"):
        with pytest.raises(ConfigError, match="--grid"):
            parse_grid([bad])
    spec = TuningSpec(str(preset), [], ["vgpo"], parse_grid(["optim.learning_rat=1e-4"]), [0], 2, 1)
    with pytest.raises(ConfigError, match="unknown config key"):
        check_tuning(spec)
    with pytest.raises(ConfigError, match="--last in"):
        check_tuning(TuningSpec(str(preset), [], ["vgpo"], parse_grid(["optim.learning_rate=1e-4"]), [0], 2, 3))


def test_method_settings_reach_only_their_methods_jobs(tmp_path: Path, preset: Path) -> None:
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"nft": ["optim.learning_rate=0.001"], "awm": ["optim.learning_rate=0.0001"]}))
    chosen = read_method_settings(settings, ["flow_grpo", "nft"])
    assert chosen == {"nft": ["optim.learning_rate=0.001"]}  # awm is not in this study
    spec = StudySpec(str(preset), ["run.iterations=3"], ["flow_grpo", "nft"], [0.0], [0], chosen)
    prepare(tmp_path / "s", spec)
    commands = {job.variant: job_command(spec, job, tmp_path / job.name, "new", None) for job in spec.jobs()}
    assert "optim.learning_rate=0.001" not in commands["flow_grpo"]
    nft = commands["nft"]
    assert nft.index("optim.learning_rate=0.001") > nft.index("run.seed=0")  # the method's own settings come last
    # a saved study grows by a method with its own settings, but a method's settings cannot change under it
    plain = StudySpec(str(preset), ["run.iterations=3"], ["flow_grpo"], [0.0], [0])
    prepare(tmp_path / "g", plain)
    prepare(tmp_path / "g", spec)
    with pytest.raises(ConfigError, match="holds another study"):
        prepare(tmp_path / "g", StudySpec(str(preset), ["run.iterations=3"], ["flow_grpo", "nft"], [0.0], [0], {}))


def test_bad_method_settings_are_named(tmp_path: Path, preset: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_method_settings(path, ["nft"])
    path.write_text(json.dumps({"nft": "optim.learning_rate=0.001"}))
    with pytest.raises(ConfigError, match=r"list of section\.key=value"):
        read_method_settings(path, ["nft"])
    spec = StudySpec(str(preset), [], ["nft"], [0.0], [0], {"nft": ["optim.learning_rat=0.001"]})
    with pytest.raises(ConfigError, match="the settings of method 'nft'"):
        prepare(tmp_path / "x", spec)
    with pytest.raises(ConfigError, match=r"method\(s\) \['awm'\] that the study does not run"):
        prepare(tmp_path / "y", StudySpec(str(preset), [], ["nft"], [0.0], [0], {"awm": ["run.seed=1"]}))


def test_a_run_that_evaluates_nothing_is_done_at_its_last_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(
        "run:\n  iterations: 2\n  eval_every: 0\n  eval_at_start: false\n  eval_at_end: false\n"
    )
    (run / "checkpoints" / "iter_000002").mkdir(parents=True)
    (run / "checkpoints" / "iter_000002" / "checkpoint.json").write_text("{}")
    assert job_state(run) == "done"


def test_eval_schedule() -> None:
    run = load_config(None, ["run.iterations=10", "run.eval_every=4"]).run
    assert [i for i in range(1, 11) if run.evaluates_after(i)] == [4, 8, 10]
    run = load_config(None, ["run.iterations=10", "run.eval_every=4", "run.eval_at_end=false"]).run
    assert [i for i in range(1, 11) if run.evaluates_after(i)] == [4, 8]


def test_the_per_seed_table_shows_each_seeds_quality(tmp_path: Path) -> None:
    spec = StudySpec(config="c.yaml", overrides=[], variants=["flow_grpo"], kl_betas=[0.0], seeds=[0, 1])
    for seed, (start, end, clipped) in enumerate([(0.3, 0.5, 0.01), (0.3, 0.2, 0.23)]):
        folder = tmp_path / "runs" / f"flow_grpo-kl0-seed{seed}"
        folder.mkdir(parents=True)
        lines = [
            {"kind": "eval", "iteration": 0, "score": start, "quality/clipped": 0.0},
            {"kind": "train", "iteration": 1, "reward_mean": 0.5, "seconds": {"sample": 1.0}, "model_evaluations": 4},
            {"kind": "eval", "iteration": 1, "score": end, "quality/clipped": clipped},
        ]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    results = summarize(tmp_path, spec)
    table = per_seed_table(results, ["quality/clipped", "quality/background_saturation"])
    assert "| flow_grpo-kl0 | 0 | 1 | +0.200 | 0.010 | - |" in table
    assert "| flow_grpo-kl0 | 1 | 1 | -0.100 | 0.230 | - |" in table  # the seed a mean would hide


@pytest.mark.slow  # ~25 s: two points x one method x one seed, 1 iteration each, then a study at the choice
def test_tune_then_study_through_the_cli(tmp_path: Path) -> None:
    model = tmp_path / "tiny"
    save_model(TinyFlowModel(TinyConfig(num_layers=1, num_attention_heads=2, attention_head_dim=8)), model)
    preset = tmp_path / "preset.yaml"
    preset.write_text(f"model:\n  path: {model}\n  lora_rank: 2\ntask:\n  name: compositional\n")
    quick = [
        "sampling.num_steps=2",
        "sampling.group_size=2",
        "sampling.prompts_per_iteration=2",
        "sampling.eval_num_steps=2",
        "sampling.eval_max_prompts=2",
        "sampling.eval_samples_per_prompt=2",
        "run.tensorboard=false",
    ]
    tune_args = [
        *("tune", str(preset), *quick, "--methods", "flow_grpo", "--grid", "optim.learning_rate=1e-4,1e-2"),
        *("--iterations", "1", "--last", "1", "--jobs", "1", "--out", "tune"),
    ]
    tune = cli(tune_args, tmp_path)
    assert tune.returncode == 0, tune.stdout + tune.stderr
    settings = json.loads((tmp_path / "tune" / "settings.json").read_text())
    assert list(settings) == ["flow_grpo"]
    run = tmp_path / "tune" / "optim.learning_rate=1e-4" / "runs" / "flow_grpo-kl0-seed100"
    assert [json.loads(x)["kind"] for x in (run / "metrics.jsonl").open()] == ["train"]  # nothing evaluated
    again = cli(tune_args, tmp_path)
    assert again.returncode == 0 and again.stdout.count("done earlier, skipped") == 2, again.stdout
    study = cli(
        [
            "study",
            str(preset),
            *quick,
            "run.iterations=1",
            "--methods",
            "flow_grpo",
            "--seeds",
            "0",
            "--method-settings",
            "tune/settings.json",
            "--jobs",
            "1",
            "--out",
            "study",
        ],
        tmp_path,
    )
    assert study.returncode == 0, study.stdout + study.stderr
    config = load_config(tmp_path / "study" / "runs" / "flow_grpo-kl0-seed0" / "config.yaml")
    (chosen,) = settings["flow_grpo"]
    assert config.optim.learning_rate == float(chosen.removeprefix("optim.learning_rate="))
    assert "## Per seed, at its last evaluation" in (tmp_path / "study" / "tables.md").read_text()


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vgpo.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
