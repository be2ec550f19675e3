"""The presets of the diffusers models (configs/flux, qwen_image, sd3_large, wan) load, name their model's options
correctly (checked against the registered options dataclass, without loading weights) and carry the paper's recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

from vgpo.config import load_config
from vgpo.models import model_options

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = sorted(
    path for folder in ("flux", "qwen_image", "sd3_large", "wan") for path in (CONFIGS / folder).glob("*.yaml")
)
GUIDANCE = {"flux": 3.5, "qwen_image": 4.0, "sd3_large": 4.5, "wan": 5.0}
KIND = {"flux": "flux", "qwen_image": "qwen_image", "sd3_large": "sd3", "wan": "wan"}


def test_every_model_has_its_presets() -> None:
    names = {(path.parent.name, path.stem) for path in PRESETS}
    for folder in ("flux", "qwen_image", "sd3_large"):
        assert {(folder, f"{task}_kl") for task in ("geneval", "ocr", "pickscore")} <= names
    assert ("wan", "pickscore_kl") in names


@pytest.mark.parametrize("path", PRESETS, ids=lambda path: f"{path.parent.name}/{path.stem}")
def test_preset_loads_with_valid_model_options_and_the_papers_recipe(path: Path) -> None:
    config = load_config(path)
    folder = path.parent.name
    assert config.model.kind == KIND[folder]
    options = model_options(config.model)  # unknown keys or wrong types would raise ConfigError
    assert options.resolution in (480, 512)
    assert (config.model.lora_rank, config.model.lora_alpha, config.model.dtype) == (32, 64, "bf16")
    assert config.sampling.guidance_scale == GUIDANCE[folder]
    assert (config.sampling.num_steps, config.sampling.noise_level, config.algorithm.clip_range) == (10, 0.7, 1e-4)
    assert config.algorithm.kl_beta == (0.01 if config.task.name == "pickscore" else 0.04)
    assert config.algorithm.train_steps(10) == 9
