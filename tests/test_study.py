"""`vgpo study`: the job list resumes where it stopped, the summary over seeds, the plots, and bad input."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vgpo.errors import ConfigError
from vgpo.experiments.study import StudyJob, StudySpec, job_state, markdown_tables, prepare, summarize
from vgpo.experiments.study_plots import plot_study
from vgpo.models.tiny import TinyConfig, TinyFlowModel, save_model

QUICK = [
    "sampling.num_steps=2",
    "sampling.group_size=2",
    "sampling.prompts_per_iteration=2",
    "sampling.eval_num_steps=2",
    "sampling.eval_samples_per_prompt=1",
    "sampling.eval_max_prompts=2",
    "run.iterations=2",
    "run.checkpoint_every=1",
    "run.eval_every=0",
    "run.tensorboard=false",
]


def write_run(folder: Path, evals: list[dict], train: list[dict]) -> None:
    folder.mkdir(parents=True)
    lines = [{"kind": "eval", **r} for r in evals] + [{"kind": "train", **r} for r in train]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_summary_is_mean_and_sample_std_over_seeds_at_shared_iterations(tmp_path: Path) -> None:
    spec = StudySpec(config="c.yaml", overrides=[], variants=["vgpo"], kl_betas=[0.0], seeds=[0, 1])
    train = [{"iteration": 1, "reward_mean": 0.5, "group_reward_std": 0.1, "instant_reward_by_step": [0.2, 0.4]}]
    write_run(
        tmp_path / "runs" / "vgpo-kl0-seed0",
        [{"iteration": 0, "accuracy": 0.2}, {"iteration": 2, "accuracy": 0.4}],
        train,
    )
    # seed 1 stopped before its iteration-2 evaluation: only iteration 0 is shared
    write_run(tmp_path / "runs" / "vgpo-kl0-seed1", [{"iteration": 0, "accuracy": 0.4}], train)
    results = summarize(tmp_path, spec)
    cell = results["conditions"]["vgpo-kl0"]
    assert cell["seeds"] == [0, 1]
    assert cell["eval"]["accuracy"]["iterations"] == [0]
    assert cell["eval"]["accuracy"]["mean"] == pytest.approx([0.3])
    assert cell["eval"]["accuracy"]["std"] == pytest.approx([0.1414213562])  # sample std of 0.2, 0.4: 0.2 / sqrt 2
    assert cell["instant_reward_by_step"]["mean"] == pytest.approx([0.2, 0.4])
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(results))
    table = markdown_tables(results, ["accuracy", "missing"])
    assert "| vgpo-kl0 | 0 | 0.300 ± 0.141 (2) |" in table and "missing" not in table
    assert {p.name for p in plot_study(results, tmp_path)} == {"curves.png", "instant_reward_by_step.png"}
    results["conditions"]["vgpo-kl0"]["instant_reward_by_step"]["mean"] = []  # no projections: no by-step figure
    (tmp_path / "x").mkdir()
    assert {p.name for p in plot_study(results, tmp_path / "x")} == {"curves.png"}
    assert cell["gain"] == {}  # one shared evaluation: no gain to take


def test_gain_is_the_per_seed_paired_difference(tmp_path: Path) -> None:
    spec = StudySpec(config="c.yaml", overrides=[], variants=["vgpo"], kl_betas=[0.0], seeds=[0, 1, 2])
    # seed bases 0.2 / 0.4 / 0.3 and finals 0.3 / 0.6 / 0.3: gains +0.1, +0.2, 0.0 -> mean 0.1, sample std 0.1;
    # the unpaired difference of means (0.4 - 0.3) happens to agree, its spread (0.15 vs 0.1) would not
    for seed, (base, final) in enumerate([(0.2, 0.3), (0.4, 0.6), (0.3, 0.3)]):
        evals = [{"iteration": 0, "score": base}, {"iteration": 5, "score": final}, {"iteration": 10, "score": final}]
        write_run(tmp_path / "runs" / f"vgpo-kl0-seed{seed}", evals, [])
    results = summarize(tmp_path, spec)
    gain = results["conditions"]["vgpo-kl0"]["gain"]["score"]
    assert (gain["mean"], gain["std"], gain["n"], gain["from"], gain["to"]) == pytest.approx((0.1, 0.1, 3, 0, 10))
    assert "| vgpo-kl0 | 0 -> 10 | +0.100 ± 0.100 (3) |" in markdown_tables(results, ["score"], key="gain")


def test_job_state_reads_the_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert job_state(run) == "new"
    run.mkdir()
    (run / "config.yaml").write_text("run:\n  iterations: 2\n")
    assert job_state(run) == "new"
    (run / "checkpoints" / "iter_000001").mkdir(parents=True)
    (run / "checkpoints" / "iter_000001" / "checkpoint.json").write_text("{}")
    assert job_state(run) == "partial"
    (run / "checkpoints" / "iter_000002").mkdir()
    (run / "checkpoints" / "iter_000002" / "checkpoint.json").write_text("{}")
    assert job_state(run) == "partial"  # checkpointed but its final evaluation not logged
    (run / "metrics.jsonl").write_text(json.dumps({"kind": "eval", "iteration": 2}) + "\n")
    assert job_state(run) == "done"


def test_bad_specs_are_refused_with_the_reason(tmp_path: Path) -> None:
    preset = tmp_path / "p.yaml"
    preset.write_text("task:\n  name: compositional\n")
    good = StudySpec(config=str(preset), overrides=[], variants=["vgpo"], kl_betas=[0.0], seeds=[0])
    with pytest.raises(ConfigError, match=r"unknown variant\(s\) \['vgop'\]"):
        prepare(tmp_path / "s", StudySpec(str(preset), [], ["vgop"], [0.0], [0]))
    with pytest.raises(ConfigError, match="--seeds lists a value twice"):
        prepare(tmp_path / "s", StudySpec(str(preset), [], ["vgpo"], [0.0], [1, 1]))
    with pytest.raises(ConfigError, match="unknown config key"):
        prepare(tmp_path / "s", StudySpec(str(preset), ["run.seeed=1"], ["vgpo"], [0.0], [0]))
    prepare(tmp_path / "s", good)
    with pytest.raises(ConfigError, match="holds another study"):  # one seed more, one variant fewer
        prepare(tmp_path / "s", StudySpec(str(preset), [], ["flow_grpo"], [0.0], [0, 1]))
    with pytest.raises(ConfigError, match="holds another study"):  # other overrides
        prepare(tmp_path / "s", StudySpec(str(preset), ["run.seed=1"], ["vgpo"], [0.0], [0, 1]))
    grown = StudySpec(str(preset), [], ["vgpo", "adae_only"], [0.0, 0.04], [0, 1])
    prepare(tmp_path / "s", grown)  # a study grows: more variants, KL values and seeds
    assert json.loads((tmp_path / "s" / "study.json").read_text())["spec"]["variants"] == ["vgpo", "adae_only"]
    with pytest.raises(ConfigError, match="holds another study"):  # ... but does not shrink back
        prepare(tmp_path / "s", good)
    wider = StudySpec(str(preset), [], ["vgpo", "flow_grpo"], [0.0], [0, 1])
    prepare(tmp_path / "t", wider)
    prepare(tmp_path / "t", good, subset=True)  # summarising part of a study is allowed
    with pytest.raises(ConfigError, match="holds another study"):
        prepare(tmp_path / "t", StudySpec(str(preset), ["run.seed=1"], ["vgpo"], [0.0], [0]), subset=True)


def test_job_names_and_overrides() -> None:
    job = StudyJob("tcrm_only", 0.04, 2)
    assert job.name == "tcrm_only-kl0.04-seed2"
    assert job.overrides() == ["algorithm.variant=tcrm_only", "algorithm.kl_beta=0.04", "run.seed=2"]


def study(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "vgpo.cli", "study", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def test_study_cli_runs_skips_resumes_and_reproduces_a_row(tmp_path: Path) -> None:
    model = tmp_path / "tiny"
    save_model(TinyFlowModel(TinyConfig(num_layers=1, num_attention_heads=2, attention_head_dim=8)), model)
    preset = tmp_path / "preset.yaml"
    preset.write_text(f"model:\n  path: {model}\n  lora_rank: 2\ntask:\n  name: compositional\n")
    args = [str(preset), *QUICK, "--variants", "flow_grpo", "vgpo", "--seeds", "0", "--out", "study"]
    first = study(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    out = tmp_path / "study"
    results = json.loads((out / "results.json").read_text())
    assert set(results["conditions"]) == {"flow_grpo-kl0", "vgpo-kl0"}
    assert (out / "curves.png").stat().st_size > 0 and "| vgpo-kl0 |" in (out / "tables.md").read_text()
    run = out / "runs" / "vgpo-kl0-seed0"
    original = (run / "metrics.jsonl").read_text()

    # interrupt vgpo's run after its first checkpoint: drop the last checkpoint and the lines written after it
    shutil.rmtree(run / "checkpoints" / "iter_000002")
    (run / "metrics.jsonl").write_text("".join(line + "\n" for line in original.splitlines()[:2]))
    again = study(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "flow_grpo-kl0-seed0: done earlier, skipped" in again.stdout
    assert "vgpo-kl0-seed0: resuming" in again.stdout
    assert _same_numbers((run / "metrics.jsonl").read_text(), original)  # the resumed row reproduces the first

    other = study(str(preset), *QUICK, "--variants", "vgpo", "--seeds", "0", "--out", "study", cwd=tmp_path)
    assert other.returncode == 2 and "holds another study" in other.stderr


def _same_numbers(resumed: str, original: str) -> bool:
    """Every metric of the resumed run equals the uninterrupted run's, except wall-clock seconds."""

    def strip(text: str) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in text.splitlines()]

    return strip(resumed) == strip(original)
