"""Subprocess smoke tests of `vgpo train`, `vgpo train --resume`, `vgpo eval` and `vgpo bench`, and the CLI's
error messages, on a tiny random-weight model of the embedded architecture."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vgpo.models.tiny import TinyConfig, TinyFlowModel, save_model

QUICK = [
    "sampling.num_steps=2",
    "sampling.group_size=2",
    "sampling.prompts_per_iteration=2",
    "sampling.eval_num_steps=2",
    "sampling.eval_samples_per_prompt=2",
    "sampling.eval_max_prompts=2",
    "run.iterations=1",
    "run.progress=false",
    "run.tensorboard=false",
]


def vgpo(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "vgpo.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    config = TinyConfig(num_layers=1, num_attention_heads=2, attention_head_dim=8)
    save_model(TinyFlowModel(config), folder)
    return folder


def test_train_resume_eval_and_report(tmp_path: Path, tiny_model: Path) -> None:
    run_dir = tmp_path / "run"
    overrides = [*QUICK, f"model.path={tiny_model}", "model.lora_rank=2"]
    result = vgpo("train", "-", *overrides, "--out", str(run_dir), cwd=tmp_path)
    assert result.returncode == 2 and "config file '-' not found" in result.stderr
    config = tmp_path / "preset.yaml"
    config.write_text("task:\n  name: compositional\nalgorithm:\n  variant: vgpo\n")
    result = vgpo("train", str(config), *overrides, "--out", str(run_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["eval", "train", "eval"]
    assert {"reward_mean", "zero_spread_fraction", "clip_fraction", "approx_kl", "kl", "seconds"} <= set(records[1])
    assert (run_dir / "report.html").read_text().startswith("<!doctype html>")
    assert (run_dir / "checkpoints" / "iter_000001" / "trainable.safetensors").is_file()

    result = vgpo("train", "--resume", str(run_dir), "run.iterations=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [0, 1, 1, 2, 2]

    result = vgpo("eval", str(run_dir), "--out", str(tmp_path / "eval"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["checkpoint"].endswith("iter_000002") and "accuracy" in metrics
    assert (tmp_path / "eval" / "samples.png").is_file()

    checkpoint = run_dir / "checkpoints" / "iter_000002"
    result = vgpo(
        "sample", "--checkpoint", str(checkpoint), "--prompts", "a red circle", "--steps", "2",
        "--num-per-prompt", "2", "--out", str(tmp_path / "samples"), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "samples" / "grid.png").is_file()


def test_eval_of_the_base_model_with_a_preset_and_overrides(tmp_path: Path, tiny_model: Path) -> None:
    config = tmp_path / "preset.yaml"
    config.write_text("task:\n  name: text\n")
    result = vgpo("eval", "--config", str(config), *QUICK, f"model.path={tiny_model}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout[result.stdout.index("{") :])
    assert metrics["checkpoint"] == "base model" and "quality/sharpness" in metrics and "diversity" in metrics


def test_bench_prints_phases_and_ratio(tmp_path: Path, tiny_model: Path) -> None:
    config = tmp_path / "preset.yaml"
    config.write_text("task:\n  name: compositional\n")
    after = tmp_path / "after.yaml"  # rewards scored after sampling instead of during it
    after.write_text("task:\n  name: compositional\n  reward_workers: 0\n")
    result = vgpo(
        "bench", str(config), str(after), *QUICK, f"model.path={tiny_model}", "--iterations", "1", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("vgpo / flow_grpo time per iteration") == 2
    assert "reward workers 1" in result.stdout and "reward workers 0" in result.stdout
    assert "flow_grpo" in result.stdout and "update" in result.stdout
    assert "summary: " in result.stdout and "after.yaml" in result.stdout


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algorithm.gama=0.9"], "unknown config key(s) algorithm.gama"),
        (["sampling.group_size=1"], "sampling.group_size must be >= 2"),
        (["algorithm.gamma=1.0"], "algorithm.gamma must be in [0, 1)"),
        (["task.train_prompts=missing.jsonl"], "task.train_prompts file 'missing.jsonl' not found"),
        (["task.name=nope"], "nope"),
    ],
)
def test_bad_input_gets_a_clear_error_without_traceback(tmp_path: Path, overrides: list[str], message: str) -> None:
    config = tmp_path / "preset.yaml"
    config.write_text("run:\n  progress: false\n  tensorboard: false\n")
    result = vgpo("train", str(config), *overrides, "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "method",
    [
        [],
        # a window method: its window's position (here steps (2, 3), (2, 3), (0, 1), (1, 2) of 8 at seed 0) must
        # come from (seed, iteration), not from a global RNG that the resumed process would start afresh
        ["algorithm.method=flow_grpo_fast", "sampling.num_steps=8"],
    ],
    ids=["vgpo", "flow_grpo_fast"],
)
def test_sigkill_and_resume_on_the_shipped_model_is_bitwise_the_uninterrupted_run(
    tmp_path: Path, method: list[str]
) -> None:
    """The product's claim, on the product: the shipped tiny model through the CLI, a process killed with SIGKILL
    after its second checkpoint, resumed with --resume, ends with the uninterrupted run's weights byte for byte.
    Fails when any random initialisation (e.g. LoRA's A matrices) escapes run.seed."""
    import signal
    import time

    preset = Path(__file__).resolve().parents[1] / "configs" / "embedded" / "compositional_vgpo.yaml"
    overrides = [
        *QUICK,
        *method,
        "run.iterations=4",
        "run.checkpoint_every=1",
        "run.keep_checkpoints=4",
        "run.eval_at_start=false",
        "run.eval_every=0",
        "run.num_threads=1",
    ]
    whole = tmp_path / "whole"
    result = vgpo("train", str(preset), *overrides, "--out", str(whole), cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "vgpo.cli", "train", str(preset), *overrides, "--out", str(killed)]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (killed / "checkpoints" / "iter_000002" / "checkpoint.json").is_file():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no second checkpoint within 240 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "checkpoints" / "iter_000004").exists()
    result = vgpo("train", "--resume", str(killed), cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    final = Path("checkpoints") / "iter_000004"
    for name in ("trainable.safetensors", "ema.safetensors", "optimizer.safetensors"):
        assert (killed / final / name).read_bytes() == (whole / final / name).read_bytes(), name
    train_lines = [
        [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (whole, killed)
    ]
    losses = [[r["loss"] for r in lines if r["kind"] == "train"] for lines in train_lines]
    assert losses[0] == losses[1] and len(losses[0]) == 4
    windows = [[r["sde_steps"] for r in lines if r["kind"] == "train"] for lines in train_lines]
    assert windows[0] == windows[1]
    if method:
        assert windows[0] == [[2, 3], [2, 3], [0, 1], [1, 2]]
