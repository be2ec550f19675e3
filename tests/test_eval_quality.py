"""`vgpo eval RUN --prompts FILE --quality ...`: the quality suite, base model vs run, on the embedded tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_reward_aesthetic import head_pth, tiny_clip  # noqa: F401 (module fixtures reused)
from vgpo.cli import main
from vgpo.experiments.quality_comparison import read_prompts
from vgpo.models.tiny import TinyConfig, TinyFlowModel, save_model

QUICK = ["sampling.num_steps=2", "sampling.group_size=2", "sampling.prompts_per_iteration=2",
         "sampling.eval_num_steps=2", "sampling.eval_max_prompts=1", "run.iterations=1", "run.progress=false",
         "run.tensorboard=false", "run.eval_at_start=false", "run.eval_every=0", "model.lora_rank=2",
         "optim.learning_rate=0.05"]  # fmt: skip
PROMPTS = ["a red circle", "two blue squares", "a green triangle above a red circle"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-iteration Flow-GRPO run of a tiny random model (trained in-process: no second interpreter start)."""
    root = tmp_path_factory.mktemp("quality-run")
    save_model(TinyFlowModel(TinyConfig(num_layers=1, num_attention_heads=2, attention_head_dim=8)), root / "tiny")
    config = root / "preset.yaml"
    config.write_text("task:\n  name: compositional\nalgorithm:\n  variant: flow_grpo\n")
    assert main(["train", str(config), *QUICK, f"model.path={root / 'tiny'}", "--out", str(root / "run")]) == 0
    return root / "run"


@pytest.fixture
def aesthetic_env(
    tiny_clip: Path,  # noqa: F811
    head_pth: tuple[Path, dict[str, torch.Tensor]],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from vgpo.rewards.aesthetic import convert_aesthetic_head

    convert_aesthetic_head(head_pth[0], tmp_path / "head.safetensors")
    monkeypatch.setenv("VGPO_AESTHETIC_CLIP", str(tiny_clip))
    monkeypatch.setenv("VGPO_AESTHETIC_HEAD", str(tmp_path / "head.safetensors"))


@pytest.mark.usefixtures("aesthetic_env")
def test_eval_reports_base_and_run_side_by_side(run_dir: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "drawbench.txt"
    prompts.write_text("# a comment\n" + "\n".join(PROMPTS) + "\n\n")
    out = tmp_path / "quality"
    result = subprocess.run(
        [sys.executable, "-m", "vgpo.cli", "eval", str(run_dir), "--prompts", str(prompts), "--quality",
         "aesthetic", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "quality suite: 3 prompts from" in result.stdout
    assert "| reward | base | iter_000001 | run - base |" in result.stdout
    record = json.loads((out / "quality.json").read_text())
    assert record["images"] == 3 and set(record["means"]) == {"aesthetic"}
    row = record["means"]["aesthetic"]
    assert row["delta"] == pytest.approx(row["run"] - row["base"])
    assert len(record["per_image"]["aesthetic"]["base"]) == 3
    assert (out / "quality.md").read_text().splitlines()[2].startswith("| aesthetic |")
    # the base column is the untrained model: the same scores from a fresh build of the run's base
    from vgpo.builders import build_policy
    from vgpo.checkpoint import read_meta
    from vgpo.config import config_from_dict
    from vgpo.rewards import build_reward
    from vgpo.sampling import generate

    config = config_from_dict(read_meta(run_dir / "checkpoints" / "iter_000001")["config"])
    images = generate(build_policy(config.model), PROMPTS, num_steps=2, seed=record["seed"])
    expected = build_reward("aesthetic", device="cpu")(images, PROMPTS, [{}] * 3)
    torch.testing.assert_close(torch.tensor(record["per_image"]["aesthetic"]["base"]), expected, atol=1e-4, rtol=0)


def test_quality_bad_input_gets_named_errors(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    cases = [
        (["eval", str(run_dir), "--quality", "aesthetic"], "--quality and --prompts go together"),
        (["eval", str(run_dir), "--prompts", str(tmp_path / "none.txt"), "--quality", "x"], "none.txt' does not exist"),
        (["eval", str(run_dir), "--prompts", str(prompts), "--quality", "no_such"], "unknown reward 'no_such'"),
        (["eval", str(run_dir), "--prompts", str(prompts), "--quality", " , "], "at least one reward name"),
        (
            ["eval", str(run_dir), "--prompts", str(prompts), "--quality", "aesthetic", "--config", "c.yaml"],
            "drop --config",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_read_prompts_reads_text_and_drawbench_csv(tmp_path: Path) -> None:
    csv_file = tmp_path / "drawbench.csv"
    csv_file.write_text('Prompts,Category\n"A red colored car.",Colors\nA black apple.,Colors\n')
    assert read_prompts(csv_file) == ["A red colored car.", "A black apple."]
    (tmp_path / "bad.csv").write_text("text,category\nx,y\n")
    with pytest.raises(Exception, match="no 'Prompts' or 'prompt' column"):
        read_prompts(tmp_path / "bad.csv")
