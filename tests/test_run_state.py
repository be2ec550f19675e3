"""Run state that cannot be trusted is never used silently: non-finite checkpoints refused on write and read,
checksums of every checkpoint and model file verified on load, a run stopped before its first checkpoint
resumable, staging folders of a kill removed, a metrics line cut short by a kill dropped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fakes import BrightnessReward, FakePolicy, FakeTask
from vgpo import checkpoint as ckpt
from vgpo.config import config_from_dict, load_config, save_config
from vgpo.errors import CheckpointError
from vgpo.trainer import Trainer


def small_config(**run):
    data = {
        "sampling": {
            "num_steps": 4,
            "group_size": 4,
            "prompts_per_iteration": 2,
            "eval_num_steps": 3,
            "eval_samples_per_prompt": 2,
        },
        "algorithm": {"variant": "vgpo", "clip_range": 0.2},
        "optim": {"micro_batch_size": 4, "learning_rate": 1e-2},
        "run": {"iterations": 2, "eval_every": 0, "checkpoint_every": 1, "progress": False, "tensorboard": False} | run,
    }
    return config_from_dict(data)


def make_trainer(run_dir: Path, config=None) -> Trainer:
    return Trainer(config or small_config(), run_dir, policy=FakePolicy(), task=FakeTask(), reward=BrightnessReward())


def test_a_checkpoint_of_non_finite_weights_is_refused_naming_the_tensor_and_the_cause(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, small_config(iterations=1))
    trainer.run()  # a good checkpoint at iteration 1
    with torch.no_grad():
        trainer.parameters[0].view(-1)[0] = float("nan")
    trainer.state.iteration = 2
    with pytest.raises(CheckpointError) as error:
        ckpt.save(trainer.state, tmp_path, config=trainer.config.to_dict(), keep=5)
    message = str(error.value)
    assert "refusing to write the checkpoint of iteration 2: trainable.safetensors tensor 'mix.weight'" in message
    assert "holds 1 non-finite value(s)" in message and "optim.learning_rate=0.01" in message
    assert f"resume from the last good checkpoint, {ckpt.checkpoint_dir(tmp_path, 1)}" in message
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["iter_000001"]


def test_resuming_from_non_finite_weights_is_refused(tmp_path: Path) -> None:
    make_trainer(tmp_path, small_config(iterations=1)).run()
    folder = ckpt.checkpoint_dir(tmp_path, 1)
    meta = json.loads((folder / ckpt.META_FILE).read_text())
    del meta["sha256"]  # as written by a vgpo without checksums, which also wrote non-finite weights
    (folder / ckpt.META_FILE).write_text(json.dumps(meta))
    state = {k: v.clone() for k, v in FakePolicy().trainable_state_dict().items()}
    state["mix.weight"].view(-1)[:3] = float("inf")
    save_file(state, str(folder / ckpt.TRAINABLE_FILE))
    with pytest.raises(CheckpointError, match=r"trainable.safetensors: tensor 'mix.weight' holds 3 non-finite"):
        make_trainer(tmp_path, small_config(iterations=2)).run(resume=True)


def test_every_checkpoint_file_has_a_checksum_and_a_changed_byte_is_refused_on_resume(tmp_path: Path) -> None:
    make_trainer(tmp_path, small_config(iterations=1)).run()
    folder = ckpt.checkpoint_dir(tmp_path, 1)
    recorded = json.loads((folder / ckpt.META_FILE).read_text())["sha256"]
    assert sorted(recorded) == sorted(p.name for p in folder.glob("*.safetensors"))  # trainable, ema, optimizer
    for name in recorded:
        data = bytearray((folder / name).read_bytes())
        original = bytes(data)
        data[-8:] = bytes(8)  # zero the end of the last tensor: still a valid safetensors file
        (folder / name).write_bytes(bytes(data))
        with pytest.raises(CheckpointError, match=rf"{name} is corrupt: its SHA-256 is .* was recorded"):
            make_trainer(tmp_path, small_config(iterations=2)).run(resume=True)
        (folder / name).write_bytes(original)
    make_trainer(tmp_path, small_config(iterations=2)).run(resume=True)  # intact again: resumes


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight model folder written by save_model."""
    from vgpo.models.tiny import TinyConfig, TinyFlowModel, save_model

    folder = tmp_path_factory.mktemp("tiny")
    save_model(TinyFlowModel(TinyConfig(num_layers=1, num_attention_heads=2, attention_head_dim=8)), folder)
    return folder


def test_a_bit_flipped_tiny_model_is_refused_on_load(tmp_path: Path, tiny_model: Path) -> None:
    import shutil

    from vgpo.models.tiny import CONFIG_FILE, MODEL_FILE, load_model

    shutil.copytree(tiny_model, tmp_path, dirs_exist_ok=True)
    assert "sha256" in json.loads((tmp_path / CONFIG_FILE).read_text())
    load_model(tmp_path)
    data = bytearray((tmp_path / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0x10  # one bit inside a weight
    (tmp_path / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model.safetensors is corrupt: its SHA-256 .* `vgpo pretrain"):
        load_model(tmp_path)


def test_the_shipped_models_record_their_checksum() -> None:
    from vgpo.checksums import file_sha256
    from vgpo.models.tiny import CONFIG_FILE, MODEL_FILE, shipped_checkpoint_dir

    folders = [shipped_checkpoint_dir(), Path(__file__).resolve().parents[1] / "checkpoints" / "tiny_latent_l8c"]
    for folder in folders:
        if (folder / MODEL_FILE).is_file():
            recorded = json.loads((folder / CONFIG_FILE).read_text())["sha256"][MODEL_FILE]
            assert recorded == file_sha256(folder / MODEL_FILE), folder


def test_a_metrics_line_cut_short_by_a_kill_is_dropped_on_resume(tmp_path: Path) -> None:
    make_trainer(tmp_path, small_config(iterations=1)).run()
    metrics = tmp_path / "metrics.jsonl"
    with metrics.open("a") as handle:
        handle.write('{"kind": "train", "iteration": 2, "reward_me')  # the kill came mid-line
    records = make_trainer(tmp_path, small_config(iterations=2)).run(resume=True)
    assert [r["iteration"] for r in records] == [2, 2]
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [0, 1, 1, 2, 2]


def test_a_damaged_metrics_line_elsewhere_is_named(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"iteration": 0}\nnot json\n{"iteration": 1}\n')
    with pytest.raises(CheckpointError, match=r"metrics.jsonl:2 is not a JSON record \('not json'\)"):
        ckpt.truncate_metrics(metrics, 1)


def test_resume_before_the_first_checkpoint_starts_again_and_removes_staging_folders(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through the CLI in-process on a tiny random model: a run killed before its first checkpoint (config.yaml,
    the start's evaluation in metrics.jsonl, a half-written staging folder) resumes from the beginning."""
    from vgpo.cli import main

    overrides = [
        "sampling.num_steps=2", "sampling.group_size=2", "sampling.prompts_per_iteration=2",
        "sampling.eval_num_steps=2", "sampling.eval_samples_per_prompt=2", "sampling.eval_max_prompts=2",
        "run.iterations=1", "run.progress=false", "run.tensorboard=false", "run.eval_at_start=false",
        f"model.path={tiny_model}", "model.lora_rank=2",
    ]  # fmt: skip
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(load_config(None, overrides), run_dir / "config.yaml")
    (run_dir / "metrics.jsonl").write_text(json.dumps({"kind": "eval", "iteration": 0, "accuracy": 0.5}) + "\n")
    staging = run_dir / "checkpoints" / ".tmp-iter_000001-4242"
    staging.mkdir(parents=True)
    (staging / ckpt.TRAINABLE_FILE).write_bytes(b"half")

    assert main(["train", "--resume", str(run_dir)]) == 0
    err = capsys.readouterr().err
    assert "has no checkpoint yet (the run stopped before its first): starting it again from the beginning" in err
    assert f"removed {staging}" in err and not staging.exists()
    assert [p.name for p in ckpt.list_checkpoints(run_dir)] == ["iter_000001"]
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["iteration"]) for r in lines] == [("train", 1), ("eval", 1)]
