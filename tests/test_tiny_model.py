"""The tiny embedded model and its policy adapter, on tiny random-weight configs (never the shipped weights)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from vgpo.errors import CheckpointError, ConfigError
from vgpo.models.tiny import (
    TinyConfig,
    TinyFlowModel,
    TinyPolicy,
    glyph_ids,
    glyph_slots,
    load_model,
    load_tiny_policy,
    quoted_text,
    save_model,
    sigma_schedule,
)
from vgpo.models.tiny_pretraining import PretrainConfig, flow_matching_loss, pretrain
from vgpo.policy import FlowPolicy
from vgpo.tasks.prompts import PromptItem

TINY = TinyConfig(num_layers=1, num_attention_heads=2, attention_head_dim=8)
PROMPTS = ["a red square", 'the word "Hi"']


class StandInTask:
    """A throwaway task: one coloured square on white."""

    name = "stand_in"
    image_size = 64
    reward_name = "none"
    colors: ClassVar[dict[str, tuple[int, int, int]]] = {"red": (220, 30, 30), "blue": (30, 70, 220)}

    def sample_items(self, rng: np.random.Generator, n: int) -> list[PromptItem]:
        return [PromptItem(f"a {c} square", {"color": str(c)}) for c in rng.choice(list(self.colors), n)]

    def render(self, item: PromptItem, rng: np.random.Generator) -> np.ndarray:
        image = np.full((64, 64, 3), 255, np.uint8)
        x, y = rng.integers(0, 40, 2)
        image[y : y + 20, x : x + 20] = self.colors[item.metadata["color"]]
        return image


def make_model(seed: int = 0) -> TinyFlowModel:
    torch.manual_seed(seed)
    model = TinyFlowModel(TINY)
    with torch.no_grad():  # diffusers zero-initialises the output layer; make velocities depend on inputs
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    return model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    save_model(make_model(), folder, half=False)
    return folder


def test_policy_protocol_and_shapes(model_dir: Path) -> None:
    policy = load_tiny_policy(model_dir)
    assert isinstance(policy, FlowPolicy)
    cond = policy.encode_prompts(PROMPTS)
    assert cond["text_tokens"].shape == (2, TINY.max_text_tokens, 384)
    assert cond["pooled"].shape == (2, 384)
    assert cond["glyphs"].dtype == torch.int64 and cond["glyphs"].shape == (2, TINY.max_glyphs)
    latents = torch.randn(2, *policy.latent_shape)
    velocity = policy.velocity(latents, torch.tensor([0.3, 0.9]), cond)
    assert velocity.shape == (2, 3, 64, 64) and velocity.dtype == torch.float32
    images = policy.decode(latents)
    assert images.shape == (2, 3, 64, 64) and images.min() >= 0 and images.max() <= 1


def test_glyphs_spell_quoted_text_case_sensitively() -> None:
    assert quoted_text('the word "Hi" on a sign') == "Hi"
    assert quoted_text("a red square") == ""
    ids = glyph_ids(['"Hi"', '"hi"', "none"], 4)
    assert ids[0, :2].tolist() != ids[1, :2].tolist() and ids[0, 2:].tolist() == [0, 0]
    assert ids[2].tolist() == [0, 0, 0, 0]


def test_sigma_schedule() -> None:
    sigmas = sigma_schedule(4)
    assert sigmas.dtype == torch.float32 and sigmas.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    shifted = sigma_schedule(4, shift=3.0)
    assert shifted[0] == 1.0 and shifted[-1] == 0.0
    assert shifted[2].item() == pytest.approx(3 * 0.5 / (1 + 2 * 0.5))


def test_guidance_is_one_batched_extrapolation(model_dir: Path) -> None:
    policy = load_tiny_policy(model_dir)
    cond = policy.encode_prompts(PROMPTS)
    uncond = policy.encode_prompts(["", ""])
    latents, sigma = torch.randn(2, 3, 64, 64), torch.tensor([0.5, 0.7])
    with torch.no_grad():
        guided = policy.velocity(latents, sigma, cond, guidance_scale=3.0)
        v_cond = policy.velocity(latents, sigma, cond)
        v_uncond = policy.velocity(latents, sigma, uncond)
    torch.testing.assert_close(guided, v_uncond + 3.0 * (v_cond - v_uncond), atol=1e-5, rtol=1e-5)


def _perturb(policy: TinyPolicy) -> None:
    with torch.no_grad():
        for parameter in policy.trainable_parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))


@pytest.mark.parametrize("lora_rank", [None, 4])
def test_reference_equals_base_until_trained(model_dir: Path, lora_rank: int | None) -> None:
    policy = load_tiny_policy(model_dir, lora_rank=lora_rank)
    cond = policy.encode_prompts(PROMPTS)
    latents, sigma = torch.randn(2, 3, 64, 64), torch.tensor([0.5, 0.5])
    with torch.no_grad():
        before = policy.velocity(latents, sigma, cond)
        with policy.reference():
            reference = policy.velocity(latents, sigma, cond)
        torch.testing.assert_close(before, reference)
        _perturb(policy)
        after = policy.velocity(latents, sigma, cond)
        with policy.reference():
            reference_after = policy.velocity(latents, sigma, cond)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(reference_after, reference)
    assert all(p.requires_grad for p in policy.trainable_parameters())  # restored after reference()


@pytest.mark.parametrize("lora_rank", [None, 4])
def test_training_steps_change_only_trainable_weights(model_dir: Path, lora_rank: int | None) -> None:
    policy = load_tiny_policy(model_dir, lora_rank=lora_rank)
    names = set(policy.trainable_state_dict())
    if lora_rank is None:
        assert names == {f"transformer.{n}" for n, _ in policy.adapter.model.transformer.named_parameters()}
    else:
        assert names and all("lora_" in name for name in names)
    before = {name: t.clone() for name, t in policy.adapter.model.state_dict().items()}
    encoder_before = [p.clone() for p in policy.adapter.text_encoder.model.parameters()]
    optimizer = torch.optim.AdamW(list(policy.trainable_parameters()), lr=1e-2)
    cond = policy.encode_prompts(PROMPTS)
    for _ in range(2):
        loss = policy.velocity(torch.randn(2, 3, 64, 64), torch.tensor([0.5, 0.2]), cond).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = policy.adapter.model.state_dict()
    changed = {name for name in after if not torch.equal(after[name], before[name])}
    assert changed and changed <= names  # glyph embedding and frozen weights untouched
    assert all(
        torch.equal(a, b) for a, b in zip(encoder_before, policy.adapter.text_encoder.model.parameters(), strict=True)
    )


@pytest.mark.parametrize("lora_rank", [None, 4])
def test_trainable_state_roundtrip_is_bitwise(model_dir: Path, lora_rank: int | None) -> None:
    from safetensors.torch import load_file, save_file

    policy = load_tiny_policy(model_dir, lora_rank=lora_rank)
    _perturb(policy)
    path = model_dir.parent / f"trainable-{lora_rank}.safetensors"
    save_file(policy.trainable_state_dict(), str(path))
    fresh = load_tiny_policy(model_dir, lora_rank=lora_rank)
    assert fresh.fingerprint() == policy.fingerprint()
    fresh.load_trainable_state_dict(load_file(str(path)))
    for name, tensor in policy.trainable_state_dict().items():
        assert torch.equal(tensor, fresh.trainable_state_dict()[name])
    with pytest.raises(ValueError, match=r"does not match this policy .*: missing"):
        fresh.load_trainable_state_dict({})


def test_fingerprint_names_layout(model_dir: Path) -> None:
    full = load_tiny_policy(model_dir)
    lora = load_tiny_policy(model_dir, lora_rank=4, lora_alpha=8)
    assert full.fingerprint().endswith("-full") and "lora-r4-a8" in lora.fingerprint()
    assert full.fingerprint().split("-")[1] == lora.fingerprint().split("-")[1]  # same base weights


def test_model_save_load_roundtrip(tmp_path: Path) -> None:
    model = make_model(1)
    save_model(model, tmp_path, half=False)
    loaded = load_model(tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name])
    save_model(model, tmp_path / "half")  # fp16 on disk, float32 once loaded
    assert load_model(tmp_path / "half").glyph_position.dtype == torch.float32


def test_missing_and_corrupt_checkpoints_say_how_to_fix(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(CheckpointError, match=r"config\.json is missing.*vgpo pretrain"):
        load_tiny_policy(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((model_dir / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"model\.safetensors (is|are) corrupt.*vgpo pretrain"):
        load_model(broken)
    (broken / "config.json").write_text(json.dumps({"model": {"num_layers": 2}}))
    save_model(make_model(), broken / "other", half=False)
    (broken / "model.safetensors").write_bytes((broken / "other" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="do not match its config"):
        load_model(broken)


def test_sampling_is_seeded_and_repeatable(model_dir: Path) -> None:
    from vgpo.sampling import generate

    policy = load_tiny_policy(model_dir)
    first = generate(policy, PROMPTS, num_steps=3, seed=5, sde=True)
    second = generate(policy, PROMPTS, num_steps=3, seed=5, sde=True)
    other = generate(policy, PROMPTS, num_steps=3, seed=6, sde=True)
    assert torch.equal(first, second) and not torch.equal(first, other)


def test_pretrain_lowers_loss_and_writes_checkpoint(tmp_path: Path) -> None:
    config = PretrainConfig(steps=8, batch_size=4, pool_size=8, refresh_per_step=2, warmup_steps=1, log_every=4)
    lines: list[str] = []
    pretrain(tmp_path, TINY, config, [StandInTask()], log=lines.append)
    losses = [float(line.split()[3]) for line in lines if line.startswith("step ")]
    assert len(losses) == 2 and losses[1] < losses[0]  # mean loss of steps 5-8 below that of steps 1-4
    payload = json.loads((tmp_path / "config.json").read_text())
    assert payload["model"]["num_layers"] == 1 and payload["pretrain"]["completed_steps"] == 8
    assert not list(tmp_path.glob("*.tmp"))
    policy = load_tiny_policy(tmp_path)
    assert policy.latent_shape == (3, 64, 64)


def test_x0_loss_weighting_is_the_clean_image_error() -> None:
    # v = x1 - x0 and x_sigma = (1 - sigma) x0 + sigma x1, so a velocity error e means an x0 error sigma * e:
    # the "x0" weighting must equal the plain MSE between the implied clean images.
    gen = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(3, 3, 4, 4, generator=gen), torch.randn(3, 3, 4, 4, generator=gen)
    sigma = torch.tensor([0.1, 0.5, 0.9])
    s = sigma[:, None, None, None]
    x_sigma = (1 - s) * x0 + s * x1
    x0_hat = x0 + 0.3 * torch.randn(3, 3, 4, 4, generator=gen)
    v_hat = (x_sigma - x0_hat) / s
    clean_mse = (x0_hat - x0).pow(2).mean()
    assert torch.allclose(flow_matching_loss(v_hat, x1 - x0, sigma, "x0"), clean_mse, atol=1e-6)
    velocity_mse = (v_hat - (x1 - x0)).pow(2).mean()
    assert torch.allclose(flow_matching_loss(v_hat, x1 - x0, sigma, "velocity"), velocity_mse, atol=1e-6)
    # a low-noise sample weighs 1 / sigma^2 = 100x more under "velocity" than under "x0"
    assert flow_matching_loss(v_hat, x1 - x0, sigma, "velocity") > 10 * flow_matching_loss(v_hat, x1 - x0, sigma, "x0")
    with pytest.raises(ValueError, match=r"loss_weighting \(--loss-weighting\) must be one of"):
        flow_matching_loss(v_hat, x1 - x0, sigma, "eps")


@pytest.mark.parametrize("kernel", [None, 8, 12, 16])
def test_patch_embedding_kernel_keeps_the_token_grid(kernel: int | None) -> None:
    config = TinyConfig(num_layers=1, num_attention_heads=2, attention_head_dim=8, embed_kernel=kernel)
    model = TinyFlowModel(config)
    proj = model.transformer.pos_embed.proj
    assert proj.kernel_size == ((kernel or 8), (kernel or 8)) and proj.stride == (8, 8)
    tokens = proj(torch.zeros(1, 3, 64, 64))
    assert tokens.shape[-2:] == (8, 8)  # 64 / patch 8, whatever the kernel
    out = model(
        torch.zeros(2, 3, 64, 64),
        torch.full((2,), 0.5),
        torch.zeros(2, 16, 384),
        torch.zeros(2, 384),
        torch.zeros(2, 8, dtype=torch.long),
    )
    assert out.shape == (2, 3, 64, 64)


def test_overlapping_patch_embedding_sees_the_neighbouring_patch() -> None:
    # With SD3's 8 x 8 patches a token's embedding depends on its own pixels only; with a 16 x 16 kernel at
    # stride 8 it also depends on the 4 nearest pixel columns of the next patch.
    for kernel, sees_neighbour in ((8, False), (16, True)):
        config = TinyConfig(num_layers=1, num_attention_heads=2, attention_head_dim=8, embed_kernel=kernel)
        proj = TinyFlowModel(config).transformer.pos_embed.proj
        image = torch.zeros(1, 3, 64, 64)
        poked = image.clone()
        poked[..., 0:8, 8] = 1.0  # first pixel column of token (0, 1)
        change = (proj(poked) - proj(image))[0, :, 0, 0].abs().max()  # token (0, 0)
        assert (change > 0) == sees_neighbour


@pytest.mark.parametrize("kernel", [4, 11])
def test_bad_patch_embedding_kernel_is_refused(kernel: int) -> None:
    with pytest.raises(ValueError, match=r"embed_kernel \(--embed-kernel\) must be >= patch_size"):
        TinyConfig(embed_kernel=kernel)


def test_config_written_before_embed_kernel_existed_loads_as_plain_patches(tmp_path: Path) -> None:
    config = TinyConfig(num_layers=1, num_attention_heads=2, attention_head_dim=8, embed_kernel=None)
    save_model(TinyFlowModel(config), tmp_path)
    payload = json.loads((tmp_path / "config.json").read_text())
    del payload["model"]["embed_kernel"]
    (tmp_path / "config.json").write_text(json.dumps(payload))
    assert load_model(tmp_path).config.embed_kernel is None


def test_centred_glyph_slots_index_the_offset_from_the_words_middle() -> None:
    words = ["AB", "ABC", "ABCD", "ABCDEFGH"]
    present = glyph_ids([f'"{word}"' for word in words], 8) > 0
    slots = glyph_slots(present, "centred")
    for row, word in enumerate(words):
        n = len(word)
        # offset i - (n - 1) / 2 in half-character steps, + 7 so the middle of the word is row 7
        assert slots[row, :n].tolist() == [int(2 * (i - (n - 1) / 2)) + 7 for i in range(n)]
    assert slots[1, 1] == 7 and slots[3, 3] == 6  # "B": the middle of "ABC"; "D": half a cell left of "ABCDEFGH"'s
    assert slots.min() >= 0 and slots.max() <= 14  # rows of a (2 * 8 - 1)-row table
    assert glyph_slots(present, "start").tolist() == [list(range(8))] * 4


def test_glyph_position_table_and_old_configs(tmp_path: Path) -> None:
    assert TinyFlowModel(TINY).glyph_position.shape == (15, TINY.text_dim)  # default: centred, 2 x 8 - 1 rows
    old = TinyConfig(num_layers=1, num_attention_heads=2, attention_head_dim=8, glyph_positions="start")
    save_model(TinyFlowModel(old), tmp_path)
    payload = json.loads((tmp_path / "config.json").read_text())
    del payload["model"]["glyph_positions"]  # written before the option existed
    (tmp_path / "config.json").write_text(json.dumps(payload))
    loaded = load_model(tmp_path)
    assert loaded.config.glyph_positions == "start" and loaded.glyph_position.shape == (8, TINY.text_dim)
    with pytest.raises(ValueError, match=r"glyph_positions \(--glyph-positions\) must be one of"):
        TinyConfig(glyph_positions="middle")


def test_centred_glyph_positions_reach_the_transformer() -> None:
    torch.manual_seed(0)
    model = TinyFlowModel(TINY)
    with torch.no_grad():
        model.glyph_position.normal_()
    tokens = torch.zeros(2, 16, TINY.text_dim)
    context = model.context(tokens, glyph_ids(['"AB"', '"ABC"'], 8))
    glyph_tokens = context[:, 16:]
    # "A" of "AB" sits half a cell left of the middle, "A" of "ABC" a whole cell: different positions
    assert not torch.allclose(glyph_tokens[0, 0], glyph_tokens[1, 0])
    # "B" of "ABC" (the middle) carries row 7; padding carries no position
    expected = model.glyph_embedding.weight[glyph_ids(['"B"'], 1)[0, 0]] + model.glyph_position[7]
    torch.testing.assert_close(glyph_tokens[1, 1], expected)
    torch.testing.assert_close(glyph_tokens[1, 3], model.glyph_embedding.weight[0])


LATENT = TinyConfig(
    num_layers=1,
    num_attention_heads=2,
    attention_head_dim=8,
    latent_channels=4,
    patch_size=2,
    embed_kernel=4,
    autoencoder_width=32,
)


def test_a_latent_model_runs_the_flow_on_the_autoencoders_grid_and_decodes_to_images(tmp_path: Path) -> None:
    torch.manual_seed(0)
    save_model(TinyFlowModel(LATENT), tmp_path, half=False)
    policy = load_tiny_policy(tmp_path, lora_rank=2)
    assert policy.latent_shape == (4, 16, 16) and LATENT.latent_size == 16
    latents = torch.randn(3, *policy.latent_shape)
    cond = policy.encode_prompts([*PROMPTS, "x"])
    assert policy.velocity(latents, torch.tensor(0.5), cond, guidance_scale=2.0).shape == (3, 4, 16, 16)
    images = policy.decode(latents)
    assert images.shape == (3, 3, 64, 64) and images.min() >= 0 and images.max() <= 1
    policy.decode_batch_size = 1  # decoding in chunks changes nothing
    torch.testing.assert_close(policy.decode(latents), images, rtol=1e-5, atol=1e-6)
    autoencoder = policy.adapter.model.autoencoder
    assert autoencoder is not None and not any(p.requires_grad for p in autoencoder.parameters())
    assert all("lora_" in name for name in policy.trainable_state_dict())
    full = load_tiny_policy(tmp_path)
    trainable = {id(p) for p in full.trainable_parameters()}
    assert trainable and not trainable & {id(p) for p in full.adapter.model.autoencoder.parameters()}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"latent_channels": 4, "latent_downsample": 3}, "power of two"),
        ({"latent_channels": 4, "autoencoder_width": 48}, "multiple of 32"),
        ({"latent_channels": 4, "patch_size": 32, "embed_kernel": None}, "divide the latent side 16"),
        ({"latent_channels": 4, "patch_size": 2, "embed_kernel": 4, "latent_scale": 0.0}, "latent_scale"),
    ],
)
def test_bad_latent_settings_are_refused_naming_the_option(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TinyConfig(**changes)


def test_latent_pretraining_trains_the_autoencoder_first_and_normalises_its_latents(tmp_path: Path) -> None:
    from vgpo.models.tiny import shared_text_encoder
    from vgpo.models.tiny_pretraining import DataPool, train_autoencoder

    config = PretrainConfig(
        steps=4, batch_size=4, pool_size=16, refresh_per_step=0, warmup_steps=1, log_every=10, autoencoder_steps=20
    )
    pool = DataPool([StandInTask()], shared_text_encoder(LATENT.max_text_tokens), LATENT, 16, seed=0)
    lines: list[str] = []
    autoencoder, measured = train_autoencoder(pool, LATENT, config, torch.Generator().manual_seed(0), log=lines.append)
    losses = [float(line.split()[-1]) for line in lines if line.startswith("autoencoder step")]
    assert len(losses) == 2 and losses[1] < losses[0]
    model = TinyFlowModel(measured)
    assert model.autoencoder is not None
    model.autoencoder.load_state_dict(autoencoder.state_dict())
    with torch.no_grad():
        latents = model.to_latents(pool.images)
    assert abs(float(latents.mean())) < 1e-4 and float(latents.std()) == pytest.approx(1.0, abs=1e-4)

    lines.clear()
    pretrain(tmp_path, LATENT, config, [StandInTask()], log=lines.append)
    assert any(line.startswith("autoencoder latents") for line in lines)
    written = json.loads((tmp_path / "config.json").read_text())["model"]
    assert written["latent_channels"] == 4 and written["latent_scale"] != 1.0
    policy = load_tiny_policy(tmp_path)
    assert policy.latent_shape == (4, 16, 16) and policy.decode(torch.zeros(1, 4, 16, 16)).shape == (1, 3, 64, 64)


def test_the_committed_latent_checkpoint_loads_as_a_policy() -> None:
    """checkpoints/tiny_latent_l8c (docs/embedded-model.md, "A latent space") stays loadable as the code changes."""
    folder = Path(__file__).resolve().parents[1] / "checkpoints" / "tiny_latent_l8c"
    policy = load_tiny_policy(folder)
    assert policy.latent_shape == (8, 16, 16) and policy.adapter.config.latent_scale != 1.0
    images = policy.decode(torch.zeros(1, *policy.latent_shape))
    assert images.shape == (1, 3, 64, 64)
