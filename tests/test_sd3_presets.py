"""Each shipped SD3 preset runs two iterations and an evaluation end to end on the tiny random SD3 pipeline, with
its own task, reward and evaluator: tiny random-weight Mask2Former / CLIP (GenEval), a tiny CLIP for PickScore's
weights, and the shipped PP-OCR model (it runs offline). Only the model size and the prompt/weight locations are
overridden; nothing is faked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fixtures_rewards import build_tiny_geneval_models, build_tiny_pickscore
from fixtures_sd3 import TINY_RESOLUTION, TOKEN_LENGTH, build_tiny_sd3_pipeline
from vgpo.config import load_config

PRESETS = Path(__file__).resolve().parents[1] / "configs" / "sd3"
PROMPTS = {
    "geneval": [
        {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}], "prompt": "a photo of a red dog"},
        {
            "tag": "counting",
            "include": [{"class": "cat", "count": 2}],
            "exclude": [{"class": "cat", "count": 3}],
            "prompt": "a photo of two cats",
        },
    ],
    "ocr": ['a sign that says "OPEN"', 'a mug printed with "Best Dad"'],
    "pickscore": ["a watercolor fox in the snow", "a cyberpunk street at night"],
}


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("presets")
    build_tiny_sd3_pipeline(root / "sd3")
    detector, clip = build_tiny_geneval_models(root)
    files = {"sd3": root / "sd3", "detector": detector, "clip": clip, "pickscore_weights": build_tiny_pickscore(root)}
    for task, prompts in PROMPTS.items():
        suffix = ".jsonl" if task == "geneval" else ".txt"
        lines = [json.dumps(p) if task == "geneval" else str(p) for p in prompts]
        (root / f"{task}{suffix}").write_text("\n".join(lines) + "\n", encoding="utf-8")
        files[task] = root / f"{task}{suffix}"
    return files


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESETS.glob("*.yaml")))
def test_preset_runs_two_iterations_and_an_evaluation(preset: str, assets, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from vgpo.trainer import Trainer

    task = preset.split("_")[0]
    overrides = [
        f"model.path={assets['sd3']}",
        f"model.resolution={TINY_RESOLUTION}",
        f"model.max_sequence_length={TOKEN_LENGTH}",
        "model.lora_rank=4",
        "model.lora_alpha=8",
        "model.dtype=fp32",
        "model.device=cpu",
        "model.gradient_checkpointing=false",
        "sampling.num_steps=2",
        "sampling.group_size=2",
        "sampling.prompts_per_iteration=1",
        "sampling.eval_num_steps=2",
        "sampling.eval_max_prompts=2",
        "sampling.eval_samples_per_prompt=1",
        "optim.micro_batch_size=4",
        "run.iterations=2",
        "run.eval_every=2",
        "run.eval_at_start=false",
        "run.progress=false",
        "run.tensorboard=false",
        f"task.train_prompts={assets[task]}",
        f"task.test_prompts={assets[task]}",
    ]
    if task == "geneval":
        overrides += [
            f"task.reward_options.geneval.detector={assets['detector']}",
            f"task.reward_options.geneval.clip={assets['clip']}",
            "task.reward_options.geneval.device=cpu",
        ]
    if task == "pickscore":
        overrides += [
            f"task.reward_options.pickscore.model={assets['pickscore_weights']}",
            f"task.reward_options.pickscore.processor={assets['pickscore_weights']}",
            "task.reward_options.pickscore.device=cpu",
        ]
    config = load_config(PRESETS / f"{preset}.yaml", overrides)
    assert config.task.name == task  # the preset's own task: no stand-in
    torch.manual_seed(0)
    trainer = Trainer(config, tmp_path / "run")
    records = trainer.run()
    train = [r for r in records if r.get("kind") != "eval"]
    evals = [r for r in records if r.get("kind") == "eval"]
    assert len(train) == 2 and len(evals) == 1
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in train)
    expected = {"geneval": "geneval", "ocr": "accuracy", "pickscore": "pickscore"}[task]
    assert expected in evals[0] and "score" in evals[0]
    assert trainer.evaluation.reward is None  # the evaluator's score is the reward's mean: not scored twice
