"""The method gym of `vgpo study`: compute axes from the runs' timings and call counts, the compute to reach
Flow-GRPO's final gain, the table and the figure; one real tiny study through the CLI."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vgpo.errors import ConfigError
from vgpo.experiments.study import (
    StudyJob,
    StudySpec,
    base_eval_source,
    cumulative_compute,
    gym_table,
    job_command,
    summarize,
)
from vgpo.experiments.study_plots import plot_study
from vgpo.models.tiny import TinyConfig, TinyFlowModel, save_model


def write_run(folder: Path, accuracy: list[float], seconds: dict[str, float], evaluations: int) -> None:
    """Four training iterations, each with these phase seconds and model evaluations; evaluations at 0, 2, 4."""
    folder.mkdir(parents=True)
    lines = [{"kind": "eval", "iteration": i, "accuracy": a} for i, a in zip((0, 2, 4), accuracy, strict=True)]
    lines += [
        {"kind": "train", "iteration": i, "reward_mean": 0.5, "seconds": seconds, "model_evaluations": evaluations}
        for i in range(1, 5)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.fixture
def gym_results(tmp_path: Path) -> dict:
    spec = StudySpec(config="c.yaml", overrides=[], variants=["flow_grpo", "nft", "awm"], kl_betas=[0.0], seeds=[0, 1])
    runs = tmp_path / "runs"
    # flow_grpo: 1.5 s and 100 evaluations per iteration; gains +0.3 (seed 0) and +0.1 (seed 1): target +0.2
    write_run(runs / "flow_grpo-kl0-seed0", [0.2, 0.3, 0.5], {"sample": 1.0, "update": 0.5}, 100)
    write_run(runs / "flow_grpo-kl0-seed1", [0.3, 0.3, 0.4], {"sample": 1.0, "update": 0.5}, 100)
    # nft: 0.75 s and 40 evaluations per iteration; seed 0 reaches +0.2 at iteration 2, seed 1 at iteration 4
    write_run(runs / "nft-kl0-seed0", [0.2, 0.45, 0.5], {"sample": 0.5, "update": 0.25}, 40)
    write_run(runs / "nft-kl0-seed1", [0.3, 0.4, 0.55], {"sample": 0.5, "update": 0.25}, 40)
    # awm: never gains more than +0.05
    write_run(runs / "awm-kl0-seed0", [0.2, 0.2, 0.25], {"sample": 0.5, "update": 0.5}, 60)
    write_run(runs / "awm-kl0-seed1", [0.2, 0.2, 0.25], {"sample": 0.5, "update": 0.5}, 60)
    return summarize(tmp_path, spec)


def test_cumulative_compute_sums_phases_and_calls() -> None:
    train = [
        {"iteration": 2, "seconds": {"sample": 2.0, "update": 1.0}, "model_evaluations": 7},
        {"iteration": 1, "seconds": {"sample": 0.5}, "model_evaluations": 5},
    ]
    assert cumulative_compute(train) == {
        0: {"seconds": 0.0, "model_evaluations": 0.0},
        1: {"seconds": 0.5, "model_evaluations": 5.0},
        2: {"seconds": 3.5, "model_evaluations": 12.0},
    }


def test_compute_axes_and_the_compute_to_reach_flow_grpo(gym_results: dict) -> None:
    assert gym_results["gym"]["metric"] == "accuracy"
    assert gym_results["gym"]["targets"]["flow_grpo-kl0"] == pytest.approx(0.2)
    flow, nft, awm = (gym_results["conditions"][f"{m}-kl0"]["compute"] for m in ("flow_grpo", "nft", "awm"))
    # the evaluation at iteration i sits at the compute of iterations 1..i
    assert flow["curve"]["iterations"] == [0, 2, 4]
    assert flow["curve"]["seconds"]["mean"] == pytest.approx([0.0, 3.0, 6.0])
    assert flow["curve"]["model_evaluations"]["mean"] == pytest.approx([0, 200, 400])
    assert nft["curve"]["seconds"]["mean"] == pytest.approx([0.0, 1.5, 3.0])
    assert nft["curve"]["model_evaluations"]["mean"] == pytest.approx([0, 80, 160])
    # per-seed paired gains: nft (0.25, 0.1) at 2 and (0.3, 0.25) at 4
    assert nft["curve"]["gain"]["mean"] == pytest.approx([0.0, 0.175, 0.275])
    assert flow["total"]["seconds"]["mean"] == pytest.approx(6.0)
    assert flow["total"]["model_evaluations"]["mean"] == pytest.approx(400)
    # nft reaches +0.2 at iteration 2 (1.5 s, 80 evaluations) and 4 (3 s, 160): mean 2.25 s, sample std 1.0607
    reach = nft["to_baseline_gain"]
    assert reach["reached"] == 2 and reach["seeds"] == 2
    assert (reach["seconds"]["mean"], reach["seconds"]["std"]) == pytest.approx((2.25, 1.0606602))
    assert (reach["model_evaluations"]["mean"], reach["model_evaluations"]["std"]) == pytest.approx((120, 56.568542))
    # flow_grpo's own seed 1 (+0.1) does not reach its mean; seed 0 does at iteration 4
    assert flow["to_baseline_gain"]["reached"] == 1 and flow["to_baseline_gain"]["seconds"]["mean"] == 6.0
    assert awm["to_baseline_gain"]["reached"] == 0


def test_gym_table_and_figure(gym_results: dict, tmp_path: Path) -> None:
    table = gym_table(gym_results)
    assert "| nft-kl0 | +0.275 ± 0.035 (2) | 3.0 ± 0.0 | 160 ± 0 | 2.2 ± 1.1 | 120 ± 57 | 3.0 ± 1.4 | 2/2 |" in table
    assert "| awm-kl0 | +0.050 ± 0.000 (2) | 4.0 ± 0.0 | 240 ± 0 | not reached | not reached | not reached | 0/2 |" in (
        table
    )
    assert "flow_grpo-kl0: +0.200" in table
    assert "gain_by_compute.png" in {p.name for p in plot_study(gym_results, tmp_path)}


def test_no_target_when_flow_grpo_gains_nothing(tmp_path: Path) -> None:
    spec = StudySpec(config="c.yaml", overrides=[], variants=["flow_grpo", "nft"], kl_betas=[0.0], seeds=[0])
    write_run(tmp_path / "runs" / "flow_grpo-kl0-seed0", [0.3, 0.2, 0.3], {"sample": 1.0}, 10)
    write_run(tmp_path / "runs" / "nft-kl0-seed0", [0.3, 0.4, 0.5], {"sample": 1.0}, 10)
    results = summarize(tmp_path, spec)
    assert results["conditions"]["nft-kl0"]["compute"]["to_baseline_gain"]["reached"] == 0
    assert "flow_grpo-kl0 gained nothing" in gym_table(results)
    alone = StudySpec(config="c.yaml", overrides=[], variants=["nft"], kl_betas=[0.0], seeds=[0])
    assert "no baseline in this study" in gym_table(summarize(tmp_path, alone))


def test_methods_that_sample_by_the_ode_get_distinct_initial_noise() -> None:
    assert StudyJob("nft", 0.0, 1).overrides()[-1] == "sampling.share_initial_noise=false"
    assert StudyJob("flow_grpo", 0.0, 1).overrides() == [
        "algorithm.variant=flow_grpo",
        "algorithm.kl_beta=0.0",
        "run.seed=1",
    ]


QUICK = [
    "sampling.num_steps=2",
    "sampling.group_size=2",
    "sampling.prompts_per_iteration=2",
    "sampling.eval_num_steps=2",
    "sampling.eval_samples_per_prompt=1",
    "sampling.eval_max_prompts=2",
    "run.iterations=2",
    "run.checkpoint_every=1",
    "run.eval_every=1",
    "run.tensorboard=false",
]


@pytest.mark.slow  # ~30 s alone, two studies of two runs (the fake-metrics tests above run by default)
def test_a_tiny_study_through_the_cli_counts_its_compute_and_resumes_nft_bitwise(tmp_path: Path) -> None:
    model = tmp_path / "tiny"
    save_model(TinyFlowModel(TinyConfig(num_layers=1, num_attention_heads=2, attention_head_dim=8)), model)
    preset = tmp_path / "preset.yaml"
    preset.write_text(f"model:\n  path: {model}\n  lora_rank: 2\ntask:\n  name: compositional\n")
    args = [str(preset), *QUICK, "--methods", "flow_grpo", "nft", "--seeds", "0", "--out", "study", "--jobs", "1"]
    done = study(args, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "study"
    results = json.loads((out / "results.json").read_text())
    # N = 2 prompts x 2 = 4 samples, T = 2 steps, int(2 x 0.99) = 1 trained step / level per sample:
    # flow_grpo 4 x 2 sampling + 4 x 1 update = 12 per iteration; nft 8 + 4 x 1 x 2 (old and trained policy) = 16
    for method, per_iteration in (("flow_grpo", 12), ("nft", 16)):
        records = [json.loads(x) for x in (out / "runs" / f"{method}-kl0-seed0" / "metrics.jsonl").open()]
        train = [r for r in records if r["kind"] == "train"]
        assert [r["model_evaluations"] for r in train] == [per_iteration] * 2
        curve = results["conditions"][f"{method}-kl0"]["compute"]["curve"]
        assert curve["model_evaluations"]["mean"] == [0, per_iteration, 2 * per_iteration]
        recorded = [0.0, sum(train[0]["seconds"].values())]
        recorded.append(recorded[1] + sum(train[1]["seconds"].values()))
        assert curve["seconds"]["mean"] == pytest.approx(recorded)
    tables = (out / "tables.md").read_text()
    assert "## Methods at equal compute" in tables and "| nft-kl0 |" in tables
    assert (out / "gain_by_compute.png").stat().st_size > 0

    # interrupt nft after its first checkpoint: its old (sampling) policy comes back from sampling.safetensors
    run = out / "runs" / "nft-kl0-seed0"
    assert (run / "checkpoints" / "iter_000001" / "sampling.safetensors").is_file()
    original = (run / "metrics.jsonl").read_text()
    shutil.rmtree(run / "checkpoints" / "iter_000002")
    (run / "metrics.jsonl").write_text("".join(line + "\n" for line in original.splitlines()[:3]))  # eval 0, 1, 1
    again = study(args, tmp_path)
    assert again.returncode == 0 and "nft-kl0-seed0: resuming" in again.stdout, again.stdout + again.stderr
    strip = lambda text: [  # noqa: E731 - every number but the wall-clock seconds
        {k: v for k, v in json.loads(line).items() if k != "seconds"} for line in text.splitlines()
    ]
    assert strip((run / "metrics.jsonl").read_text()) == strip(original)


def study(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vgpo.cli", "study", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_the_headline_metric_can_be_chosen(gym_results: dict, tmp_path: Path) -> None:
    spec = StudySpec(config="c.yaml", overrides=[], variants=["flow_grpo", "nft", "awm"], kl_betas=[0.0], seeds=[0, 1])
    with pytest.raises(ConfigError, match="--metric score: no evaluation of this study reports it"):
        summarize(tmp_path, spec, "score")
    assert summarize(tmp_path, spec, "accuracy")["gym"]["metric"] == "accuracy"


def test_the_base_model_is_evaluated_once_per_seed(tmp_path: Path) -> None:
    spec = StudySpec(
        config="c.yaml",
        overrides=[],
        variants=["flow_grpo", "nft", "awm"],
        kl_betas=[0.0],
        seeds=[0, 1],
        method_overrides={"awm": ["model.lora_rank=4"]},  # a setting that could change the base evaluation
    )
    jobs = {job.name: job for job in spec.jobs()}
    source = {name: base_eval_source(spec, job) for name, job in jobs.items()}
    assert source["flow_grpo-kl0-seed0"] is None and source["flow_grpo-kl0-seed1"] is None  # the first of a seed
    assert source["nft-kl0-seed1"] == jobs["flow_grpo-kl0-seed1"]  # differs in algorithm.* and its own noise only
    assert source["awm-kl0-seed0"] is None  # its own model settings: evaluates itself
    command = job_command(spec, jobs["nft-kl0-seed0"], tmp_path, "new", 1, share_base_eval=True)
    assert "run.eval_at_start=false" in command
    assert "run.eval_at_start=false" not in job_command(spec, jobs["nft-kl0-seed0"], tmp_path, "new", 1)
    assert "run.eval_at_start=false" not in job_command(spec, jobs["flow_grpo-kl0-seed0"], tmp_path, "new", 1, True)
    # the summary gives a run that skipped it the source's iteration-0 row, marked as shared
    write_run(tmp_path / "runs" / "flow_grpo-kl0-seed0", [0.2, 0.3, 0.5], {"sample": 1.0}, 10)
    write_run(tmp_path / "runs" / "nft-kl0-seed0", [0.9, 0.4, 0.6], {"sample": 1.0}, 10)
    lines = (tmp_path / "runs" / "nft-kl0-seed0" / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "runs" / "nft-kl0-seed0" / "metrics.jsonl").write_text("\n".join(lines[1:]) + "\n")  # no eval 0
    one_seed = StudySpec("c.yaml", [], ["flow_grpo", "nft"], [0.0], [0])
    results = summarize(tmp_path, one_seed)
    assert results["conditions"]["nft-kl0"]["gain"]["accuracy"]["mean"] == pytest.approx(0.6 - 0.2)


@pytest.mark.slow  # ~40 s: the same two-method study with and without the shared base evaluation
def test_sharing_the_base_evaluation_changes_no_figure(tmp_path: Path) -> None:
    model = tmp_path / "tiny"
    save_model(TinyFlowModel(TinyConfig(num_layers=1, num_attention_heads=2, attention_head_dim=8)), model)
    preset = tmp_path / "preset.yaml"
    preset.write_text(f"model:\n  path: {model}\n  lora_rank: 2\ntask:\n  name: compositional\n")
    base = [str(preset), *QUICK, "run.iterations=1", "--methods", "flow_grpo", "nft", "--seeds", "0", "--jobs", "1"]
    assert study([*base, "--out", "shared"], tmp_path).returncode == 0
    assert study([*base, "--out", "own", "--no-share-base-eval"], tmp_path).returncode == 0
    read = lambda folder: [  # noqa: E731
        json.loads(line) for line in (tmp_path / folder / "runs" / "nft-kl0-seed0" / "metrics.jsonl").open()
    ]
    own, shared = read("own"), read("shared")
    assert own[0]["kind"] == "eval" and own[0]["iteration"] == 0 and shared[0]["kind"] == "train"  # skipped there
    flow_grpo_base = json.loads((tmp_path / "own" / "runs" / "flow_grpo-kl0-seed0" / "metrics.jsonl").open().readline())
    strip = lambda record: {k: v for k, v in record.items() if k != "seconds"}  # noqa: E731
    assert strip(own[0]) == strip(flow_grpo_base)  # nft's own base evaluation is bitwise flow_grpo's
    gains = [
        json.loads((tmp_path / f / "results.json").read_text())["conditions"]["nft-kl0"]["gain"]
        for f in ("own", "shared")
    ]
    assert gains[0] == gains[1]
