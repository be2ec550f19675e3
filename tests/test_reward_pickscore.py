"""PickScore reward on a tiny random-weight CLIP built and saved locally (never downloads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fixtures_sd3 import _clip_tokenizer
from vgpo.errors import ConfigError, RewardError
from vgpo.rewards import build_reward, checked_call, reward_names
from vgpo.rewards import pickscore as pickscore_module
from vgpo.rewards.pickscore import PickScoreReward, pickscore, preprocess_images

SIDE = 32
PROMPTS = ["a red cube", "a photo of a cat", "blue", "the cat on the red cube, a photo"]


@pytest.fixture(scope="module")
def tiny_pickscore(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model folder, processor folder): a random tiny CLIPModel and a CLIPProcessor, saved separately."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    text_config = {
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_attention_heads": 2,
        "num_hidden_layers": 1,
        "vocab_size": 600,
        "max_position_embeddings": 16,
    }
    vision_config = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_attention_heads": 2,
        "num_hidden_layers": 1,
        "image_size": SIDE,
        "patch_size": 8,
    }
    config = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=16)
    model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE}, resample=3
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=_clip_tokenizer())
    root = tmp_path_factory.mktemp("pickscore")
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "processor")
    return root / "model", root / "processor"


def _quantised_images(count: int, height: int = SIDE, width: int = SIDE) -> torch.Tensor:
    """Random images on the 8-bit grid, so the processor's uint8 path sees exactly the same pixels."""
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (count, 3, height, width), generator=generator).float() / 255.0


def _reference_scores(model_dir: Path, processor_dir: Path, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """scale * cos(image, text) computed with CLIPModel and CLIPProcessor directly (the processor's own path)."""
    from transformers import CLIPModel, CLIPProcessor

    model: Any = CLIPModel.from_pretrained(model_dir).eval()
    processor: Any = CLIPProcessor.from_pretrained(processor_dir)
    arrays = [np.round(image.permute(1, 2, 0).numpy() * 255.0).astype(np.uint8) for image in images]
    inputs = processor(images=arrays, text=prompts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        image_out = model.get_image_features(pixel_values=inputs["pixel_values"])
        text_out = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    image_embeds = image_out if isinstance(image_out, torch.Tensor) else image_out.pooler_output
    text_embeds = text_out if isinstance(text_out, torch.Tensor) else text_out.pooler_output
    cosine = torch.nn.functional.cosine_similarity(image_embeds, text_embeds, dim=-1)
    return (model.logit_scale.exp() * cosine).detach()  # logit_scale is a parameter: no graph to keep


def test_scores_match_hand_computation(tiny_pickscore: tuple[Path, Path]) -> None:
    model_dir, processor_dir = tiny_pickscore
    reward = pickscore(model=str(model_dir), processor=str(processor_dir), device="cpu")
    images = _quantised_images(len(PROMPTS))
    scores = checked_call(reward, images, PROMPTS, [{} for _ in PROMPTS], name="pickscore")
    assert scores.shape == (len(PROMPTS),) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all()
    expected = _reference_scores(model_dir, processor_dir, images, PROMPTS)
    torch.testing.assert_close(scores, expected.float() / 26.0, rtol=1e-4, atol=1e-4)  # the baseline's scaling
    raw = pickscore(model=str(model_dir), processor=str(processor_dir), device="cpu", raw=True)
    torch.testing.assert_close(raw(images, PROMPTS, [{} for _ in PROMPTS]), expected.float(), rtol=1e-4, atol=1e-4)
    from vgpo.tasks import build_evaluator

    options = {"model": str(model_dir), "processor": str(processor_dir), "device": "cpu", "batch_size": 2}
    metrics = build_evaluator("pickscore", options)(images, PROMPTS, [{} for _ in PROMPTS])
    assert metrics["pickscore"] == pytest.approx(float(expected.mean()), abs=1e-4)  # the paper's column: raw
    assert metrics["score"] == pytest.approx(float(scores.mean()), abs=1e-5)
    # each image is scored against its own prompt: swapping prompts changes the scores
    swapped = reward(images, PROMPTS[::-1], [{} for _ in PROMPTS])
    assert not torch.allclose(swapped, scores)


def test_batch_size_invariance(tiny_pickscore: tuple[Path, Path]) -> None:
    model_dir, processor_dir = tiny_pickscore
    images = _quantised_images(len(PROMPTS))
    metadata: list[dict] = [{} for _ in PROMPTS]
    full = pickscore(model=str(model_dir), processor=str(processor_dir), device="cpu", batch_size=32)
    small = pickscore(model=str(model_dir), processor=str(processor_dir), device="cpu", batch_size=3)
    torch.testing.assert_close(small(images, PROMPTS, metadata), full(images, PROMPTS, metadata), rtol=1e-5, atol=1e-5)


def test_resize_follows_processor(tiny_pickscore: tuple[Path, Path]) -> None:
    """Larger, non-square images: torch resize + center crop is close to the processor's PIL path."""
    from transformers import CLIPProcessor

    _, processor_dir = tiny_pickscore
    processor: Any = CLIPProcessor.from_pretrained(processor_dir)
    images = torch.nn.functional.interpolate(_quantised_images(2, 12, 20), size=(48, 80), mode="bilinear")
    images = torch.round(images * 255.0) / 255.0
    ours = preprocess_images(images, processor.image_processor)
    arrays = [np.round(image.permute(1, 2, 0).numpy() * 255.0).astype(np.uint8) for image in images]
    theirs = processor.image_processor(images=arrays, return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape == (2, 3, SIDE, SIDE)
    # same geometry (a 1-pixel shift gives a mean difference ~0.2, measured ~0.004): what remains is PIL's
    # uint8 bicubic against torch's float bicubic
    assert (ours - theirs).abs().mean() < 0.02 and (ours - theirs).abs().max() < 0.06


def test_missing_folder_gives_clear_error(tmp_path: Path, tiny_pickscore: tuple[Path, Path]) -> None:
    missing = tmp_path / "no-such-pickscore"
    with pytest.raises(RewardError) as info:
        pickscore(model=str(missing), processor=str(tiny_pickscore[1]), device="cpu")
    message = str(info.value)
    assert str(missing) in message and "huggingface-cli download yuvalkirstain/PickScore_v1" in message
    assert "VGPO_PICKSCORE_MODEL" in message and "HF_HUB_OFFLINE=1" in message
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RewardError, match=r"processor folder .*empty"):
        pickscore(model=str(tiny_pickscore[0]), processor=str(empty), device="cpu")


def test_hub_id_not_cached_gives_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("VGPO_PICKSCORE_MODEL", raising=False)
    with pytest.raises(RewardError, match=r"'yuvalkirstain/PickScore_v1' is neither a local folder nor in"):
        pickscore(device="cpu")


def test_registry_builds_by_name_with_kwargs_and_env(
    tiny_pickscore: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir, processor_dir = tiny_pickscore
    assert "pickscore" in reward_names()
    reward = build_reward("pickscore", model=str(model_dir), processor=str(processor_dir), device="cpu", batch_size=2)
    assert isinstance(reward, PickScoreReward) and reward.batch_size == 2
    monkeypatch.setenv("VGPO_PICKSCORE_MODEL", str(model_dir))
    monkeypatch.setenv("VGPO_PICKSCORE_PROCESSOR", str(processor_dir))
    weighted = build_reward({"pickscore": 2.0}, device="cpu")
    images = _quantised_images(2)
    total = weighted(images, PROMPTS[:2], [{}, {}])
    torch.testing.assert_close(total, 2.0 * reward(images, PROMPTS[:2], [{}, {}]))
    # one model load per (model, processor, device, dtype), shared by the rewards built above
    assert sum(key[0] == str(model_dir) for key in pickscore_module._CACHE) == 1


def test_dtype_and_unloadable_folder(tiny_pickscore: tuple[Path, Path], tmp_path: Path) -> None:
    model_dir, processor_dir = tiny_pickscore
    images = _quantised_images(2)
    fp32 = pickscore(model=str(model_dir), processor=str(processor_dir), device="cpu")(images, PROMPTS[:2], [{}, {}])
    bf16 = pickscore(model=str(model_dir), processor=str(processor_dir), device="cpu", dtype="bf16")
    scores = bf16(images, PROMPTS[:2], [{}, {}])
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()
    torch.testing.assert_close(scores, fp32, rtol=0.05, atol=0.5)
    with pytest.raises(ConfigError, match="fp32, fp16, bf16"):
        pickscore(model=str(model_dir), processor=str(processor_dir), device="cpu", dtype="int8")
    # a folder with a config but no weights passes the startup check and fails at load with the same fix
    broken = tmp_path / "config-only"
    broken.mkdir()
    (broken / "config.json").write_text((model_dir / "config.json").read_text())
    reward = pickscore(model=str(broken), processor=str(processor_dir), device="cpu")
    with pytest.raises(RewardError, match="could not load PickScore"):
        reward(images, PROMPTS[:2], [{}, {}])
