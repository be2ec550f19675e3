"""Subprocess smoke tests of `vgpo pretrain` and `vgpo sample` on a tiny config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY_ARGS = ["--num-layers", "1", "--num-attention-heads", "2", "--attention-head-dim", "8"]  # the older flags
TINY = ["model.num_layers=1", "model.num_attention_heads=2", "model.attention_head_dim=8"]


def vgpo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vgpo.cli", *args], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pretrain")
    result = vgpo(
        "pretrain", "--out", str(out), "train.steps=2", "train.batch_size=4", "train.pool_size=8",
        "train.refresh_per_step=2", "train.log_every=1", *TINY,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "step 2/2 loss" in result.stdout
    return out


def test_pretrain_writes_a_loadable_model_folder(pretrained: Path) -> None:
    assert sorted(p.name for p in pretrained.iterdir()) == ["config.json", "model.safetensors"]
    payload = json.loads((pretrained / "config.json").read_text())
    assert payload["model"]["num_layers"] == 1
    assert payload["pretrain"]["tasks"] == ["compositional", "text"]


def test_sample_is_seeded_and_writes_pngs_and_grid(pretrained: Path, tmp_path: Path) -> None:
    from vgpo.commands.sample import load_policy
    from vgpo.sampling import generate

    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text('a sign that says "AB"\n')
    out = tmp_path / "out"
    result = vgpo(
        "sample", "--prompts", "a red circle", "--prompt-file", str(prompt_file), "--checkpoint",
        str(pretrained), "--steps", "2", "--num-per-prompt", "2", "--sde", "--seed", "3", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs][-1] == "grid.png" and len(pngs) == 5
    # The same seed in another process gives the same pixels.
    prompts = ["a red circle"] * 2 + ['a sign that says "AB"'] * 2
    images = generate(load_policy(str(pretrained), "cpu"), prompts, num_steps=2, seed=3, sde=True)
    expected = (images.permute(0, 2, 3, 1).numpy() * 255.0).round().astype(np.uint8)
    for index, path in enumerate(pngs[:4]):
        assert np.array_equal(np.asarray(Image.open(path)), expected[index])


def test_sample_reports_a_missing_checkpoint(tmp_path: Path) -> None:
    result = vgpo("sample", "--prompts", "x", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path))
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_sample_reports_a_corrupt_model_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "model.safetensors").write_bytes(b"")
    result = vgpo("sample", "--prompts", "x", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "corrupt" in result.stderr and "vgpo pretrain" in result.stderr


def test_sample_needs_prompts(tmp_path: Path) -> None:
    result = vgpo("sample", "--out", str(tmp_path))
    assert result.returncode == 2 and "no prompts" in result.stderr


def test_pretrain_records_its_architecture_and_loss(pretrained: Path) -> None:
    payload = json.loads((pretrained / "config.json").read_text())
    assert payload["model"]["embed_kernel"] == 16 and payload["pretrain"]["loss_weighting"] == "x0"


def test_pretrain_refuses_a_bad_embed_kernel_without_a_traceback(tmp_path: Path) -> None:
    result = vgpo("pretrain", "--out", str(tmp_path / "m"), "--steps", "1", "--embed-kernel", "11", *TINY_ARGS)
    assert result.returncode != 0
    assert "--embed-kernel" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "m").exists()


def test_pretrain_init_continues_from_a_model_folder(pretrained: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "continued"
    # One step at a negligible learning rate: the written EMA is the init model's weights (fp16 round trip);
    # a run from scratch draws other weights from the same seed.
    result = vgpo(
        "pretrain", "--out", str(out), "--init", str(pretrained), "--steps", "1", "--lr", "1e-12",
        "--batch-size", "4", "--pool-size", "8", "--refresh-per-step", "2", "--seed", "5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    payload = json.loads((out / "config.json").read_text())
    assert payload["pretrain"]["init"] == str(pretrained)
    assert payload["model"] == json.loads((pretrained / "config.json").read_text())["model"]
    before, after = load_file(str(pretrained / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert (after[name].float() - tensor.float()).abs().max() <= 1e-3 * (1 + tensor.float().abs().max()), name


def test_pretrain_init_refuses_architecture_options(pretrained: Path, tmp_path: Path) -> None:
    result = vgpo("pretrain", "--out", str(tmp_path / "m"), "--init", str(pretrained), "--steps", "1", *TINY_ARGS)
    assert result.returncode != 0
    assert "run.init takes its architecture" in result.stderr and "Traceback" not in result.stderr


def test_pretrain_init_reports_a_missing_folder(tmp_path: Path) -> None:
    result = vgpo("pretrain", "--out", str(tmp_path / "m"), "--init", str(tmp_path / "none"), "--steps", "1")
    assert result.returncode != 0
    assert "missing" in result.stderr and "Traceback" not in result.stderr


def test_a_latent_model_pretrains_trains_and_samples_through_the_cli(tmp_path: Path) -> None:
    """`vgpo pretrain --latent-channels` trains the autoencoder, then the flow model; `vgpo train` (VGPO: TCRM
    decodes every step's projection through the decoder) and `vgpo sample` run on the folder it writes."""
    model = tmp_path / "latent"
    result = vgpo(
        "pretrain", "--out", str(model), "--steps", "2", "--autoencoder-steps", "3", "--batch-size", "4",
        "--pool-size", "8", "--refresh-per-step", "2", "--log-every", "1", "--latent-channels", "4",
        "--autoencoder-width", "32", "--patch-size", "2", "--embed-kernel", "4", *TINY_ARGS,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "autoencoder step 3/3 loss" in result.stdout and "step 2/2 loss" in result.stdout
    written = json.loads((model / "config.json").read_text())["model"]
    assert written["latent_channels"] == 4 and written["latent_scale"] > 0 and written["autoencoder_width"] == 32

    run_dir = tmp_path / "run"
    result = vgpo(
        "train", "configs/embedded/compositional_vgpo.yaml", f"model.path={model}", "model.lora_rank=2",
        "sampling.num_steps=2", "sampling.group_size=2", "sampling.prompts_per_iteration=2",
        "sampling.eval_num_steps=2", "sampling.eval_samples_per_prompt=1", "sampling.eval_max_prompts=2",
        "run.iterations=1", "run.eval_every=0", "run.progress=false", "run.tensorboard=false", "--out", str(run_dir),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [train] = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    assert len(train["instant_reward_by_step"]) == 2  # both steps' projections decoded and scored

    result = vgpo("sample", "--checkpoint", str(model), "--prompts", "a red circle", "--steps", "2",
                  "--out", str(tmp_path / "samples"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    images = [path for path in (tmp_path / "samples").glob("*.png") if path.name != "grid.png"]
    assert images and all(np.asarray(Image.open(path)).shape == (64, 64, 3) for path in images)
