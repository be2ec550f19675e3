"""The adapter base (`vgpo.models.base`) through the toy model of docs/models.md, run from the docs themselves, and
the tiny model's LoRA export."""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from vgpo.errors import ConfigError
from vgpo.math import sde_step
from vgpo.models import _REGISTRY, build_model, model_names
from vgpo.models.base import AdapterPolicy, export_lora
from vgpo.policy import FlowPolicy, select_rows
from vgpo.sampling import rollout

LORA_FILE = "pytorch_lora_weights.safetensors"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "models.md"


@pytest.fixture(scope="module")
def docs_example() -> Iterator[dict[str, Any]]:
    """Run the python blocks of docs/models.md's worked example in a fresh module; unregister "toy" afterwards."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    assert len(blocks) == 2, "docs/models.md should hold the adapter block and the usage block"
    module = types.ModuleType("docs_models_example")
    sys.modules[module.__name__] = module  # dataclasses and get_type_hints look the module up by name
    try:
        for block in blocks:
            exec(compile(block, str(DOCS), "exec"), module.__dict__)  # our own docs, on purpose
        yield module.__dict__
    finally:
        _REGISTRY.pop("toy", None)
        del sys.modules[module.__name__]


def toy(docs_example: dict[str, Any], *overrides: str) -> AdapterPolicy[Any]:
    from vgpo.config import load_config

    config = load_config(None, ["model.kind=toy", "model.device=cpu", *overrides])
    return build_model(config.model)


def perturb_lora(policy: AdapterPolicy[Any]) -> None:
    with torch.no_grad():
        for name, parameter in policy.denoiser.named_parameters():
            if ".lora_B." in name:
                parameter.fill_(0.1)


def test_the_docs_example_registers_a_model_that_rolls_out_and_re_scores_with_ratio_one(
    docs_example: dict[str, Any],
) -> None:
    policy = docs_example["policy"]
    assert "toy" in model_names() and isinstance(policy, FlowPolicy) and isinstance(policy, AdapterPolicy)
    assert policy.fingerprint() == "toy:lora-r2" and policy.adapter.shift == 2.0  # model.options reached the adapter
    perturb_lora(policy)
    cond = select_rows(policy.encode_prompts(["a cat", "a dog"]), torch.tensor([0, 0, 1, 1]))
    result = rollout(policy, cond, 3, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert result.latents.shape == (4, 4, 1, 4, 4) and torch.equal(result.sigmas, policy.sigma_schedule(3))
    # re-scoring each stored transition under the same weights gives log-prob ratio exactly 1 (the first PPO ratio)
    for step in range(3):
        velocity = policy.velocity(result.latents[:, step], result.sigmas[step].repeat(4), cond, 2.0)
        again = sde_step(
            result.latents[:, step],
            velocity,
            float(result.sigmas[step]),
            float(result.sigmas[step + 1]),
            0.7,
            prev_sample=result.latents[:, step + 1],
        )
        assert torch.equal(again.log_prob, result.log_probs[:, step])
    images = policy.decode(result.final)
    assert images.shape == (4, 3, 4, 4) and images.min() >= 0 and images.max() <= 1


def test_cfg_is_one_batched_call_on_uncond_then_cond_rows(docs_example: dict[str, Any]) -> None:
    policy = toy(docs_example, "model.lora_rank=2")
    perturb_lora(policy)
    calls: list[int] = []
    policy.denoiser.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    cond = policy.encode_prompts(["a cat", "a dog"])
    latents, sigma = torch.randn(2, 1, 4, 4), torch.tensor([0.9, 0.3])
    guided = policy.velocity(latents, sigma, cond, guidance_scale=3.0)
    assert calls == [4]
    with torch.no_grad():
        v_cond = policy.velocity(latents, sigma, cond)
        v_uncond = policy.velocity(latents, sigma, policy.adapter.negative(cond))
    torch.testing.assert_close(guided, v_uncond + 3.0 * (v_cond - v_uncond), rtol=1e-6, atol=1e-6)


def test_an_embedded_guidance_model_gets_the_scale_and_no_pair(docs_example: dict[str, Any]) -> None:
    policy = toy(docs_example)
    seen: list[tuple[int, float]] = []
    raw = policy.adapter.predict_velocity

    def recording(denoiser, latents, sigma, cond, guidance_scale):  # type: ignore[no-untyped-def]
        seen.append((latents.shape[0], guidance_scale))
        return raw(denoiser, latents, sigma, cond, guidance_scale)

    policy.adapter.predict_velocity = recording
    policy.adapter.guidance = "embedded"
    policy.velocity(torch.randn(2, 1, 4, 4), torch.tensor([0.5, 0.5]), policy.encode_prompts(["a", "b"]), 3.5)
    assert seen == [(2, 3.5)]


def test_lora_trains_only_the_adapters_and_reference_is_the_base(docs_example: dict[str, Any]) -> None:
    policy = toy(docs_example, "model.lora_rank=2", "model.lora_alpha=4")
    names = set(policy.trainable_state_dict())
    assert names and all(".to_q.lora_" in name for name in names)
    assert {id(p) for p in policy.trainable_parameters()} == {
        id(p) for p in policy.denoiser.parameters() if p.requires_grad
    }
    cond = policy.encode_prompts(["a cat"])
    latents, sigma = torch.randn(1, 1, 4, 4), torch.tensor([0.5])
    base = policy.velocity(latents, sigma, cond)
    perturb_lora(policy)
    trained = policy.velocity(latents, sigma, cond)
    with policy.reference():
        reference = policy.velocity(latents, sigma, cond)
    assert torch.equal(reference, base) and not torch.allclose(trained, base)
    blocks = list(policy.denoiser.transformer_blocks)
    assert policy.shard_units() == [*blocks, policy.denoiser]


def test_full_fine_tuning_keeps_a_frozen_reference_copy_and_shards_both(docs_example: dict[str, Any]) -> None:
    policy = toy(docs_example)  # lora_rank null: full fine-tuning
    assert set(policy.trainable_state_dict()) == set(dict(policy.denoiser.named_parameters()))
    cond = policy.encode_prompts(["a cat"])
    latents, sigma = torch.randn(1, 1, 4, 4), torch.tensor([0.5])
    base = policy.velocity(latents, sigma, cond)
    with torch.no_grad():
        for parameter in policy.trainable_parameters():
            parameter.add_(0.05)
    with policy.reference():
        torch.testing.assert_close(policy.velocity(latents, sigma, cond), base, rtol=0, atol=0)
    units = policy.shard_units()
    assert len(units) == 6 and units[2] is policy.denoiser and units[5] is not policy.denoiser


def test_trainable_state_round_trip_and_named_errors(docs_example: dict[str, Any]) -> None:
    policy = toy(docs_example, "model.lora_rank=2")
    perturb_lora(policy)
    state = policy.trainable_state_dict()
    fresh = toy(docs_example, "model.lora_rank=2")
    fresh.load_trainable_state_dict(state)
    assert all(torch.equal(state[name], value) for name, value in fresh.trainable_state_dict().items())
    missing = dict(state)
    removed = sorted(missing)[0]
    del missing[removed]
    with pytest.raises(ValueError, match=rf"missing \['{re.escape(removed)}'\]"):
        fresh.load_trainable_state_dict(missing)


def test_a_configured_lora_target_that_matches_nothing_lists_the_linear_layers(docs_example: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"\['to_k'\] match no sub-module.*'proj_in', 'proj_out', 'to_q'"):
        toy(docs_example, "model.lora_rank=2", "model.lora_targets=[to_k]")


def test_lora_init_is_a_setting_and_both_inits_start_as_a_no_op(docs_example: dict[str, Any]) -> None:
    torch.manual_seed(1)
    gaussian = toy(docs_example, "model.lora_rank=2", "model.lora_init=gaussian").trainable_state_dict()
    torch.manual_seed(1)
    kaiming = toy(docs_example, "model.lora_rank=2", "model.lora_init=kaiming").trainable_state_dict()
    a_name = next(name for name in gaussian if ".lora_A." in name)
    assert not torch.equal(gaussian[a_name], kaiming[a_name])
    for state in (gaussian, kaiming):
        assert all(not value.any() for name, value in state.items() if ".lora_B." in name)


def test_prompt_cache_encodes_only_new_prompts_and_returns_the_same_rows(docs_example: dict[str, Any]) -> None:
    policy = toy(docs_example, "model.prompt_cache=2")
    encoded: list[list[str]] = []
    raw = policy.adapter.encode_prompts

    def recording(prompts):  # type: ignore[no-untyped-def]
        encoded.append(list(prompts))
        return raw(prompts)

    policy.adapter.encode_prompts = recording
    first = policy.encode_prompts(["a", "b", "a"])
    second = policy.encode_prompts(["b", "c"])
    third = policy.encode_prompts(["b", "a", "c"])  # more prompts than the cache holds: still every row
    assert encoded == [["a", "b"], ["c"], ["a"]]  # "a" was the least recently used when "c" came in
    assert torch.equal(first["prompt"], raw(["a", "b", "a"])["prompt"])
    assert torch.equal(second["prompt"], raw(["b", "c"])["prompt"])
    assert torch.equal(third["prompt"], raw(["b", "a", "c"])["prompt"])
    assert list(policy._cache) == ["a", "c"]  # the two most recently used, in order of use


def test_decode_runs_in_chunks_of_decode_batch_size(docs_example: dict[str, Any]) -> None:
    policy = toy(docs_example, "model.decode_batch_size=3")
    sizes: list[int] = []
    raw = policy.adapter.decode
    policy.adapter.decode = lambda latents: (sizes.append(latents.shape[0]), raw(latents))[1]
    latents = torch.randn(7, 1, 4, 4)
    assert torch.equal(policy.decode(latents), raw(latents)) and sizes == [3, 3, 1]


def test_a_model_without_a_diffusers_format_refuses_export(docs_example: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no diffusers LoRA format"):
        export_lora(toy(docs_example, "model.lora_rank=2"), tmp_path)


def test_tiny_export_loads_into_its_transformer_with_diffusers(tmp_path: Path) -> None:
    """The tiny model has no stock pipeline; its LoRA file is SD3's, read by diffusers' load_lora_adapter."""
    from vgpo.models.tiny import TinyConfig, TinyFlowModel, load_model, load_tiny_policy, save_model

    torch.manual_seed(0)
    save_model(TinyFlowModel(TinyConfig(num_layers=2, num_attention_heads=2, attention_head_dim=8)), tmp_path / "m")
    policy = load_tiny_policy(tmp_path / "m", lora_rank=2, lora_alpha=4)
    perturb_lora(policy)
    out = export_lora(policy, tmp_path / "lora")
    model = load_model(tmp_path / "m")
    model.transformer.load_lora_adapter(out, prefix="transformer", weight_name=LORA_FILE)
    cond = policy.encode_prompts(["a red circle", 'the word "ab"'])
    latents, sigma = torch.randn(2, *policy.latent_shape), torch.tensor([0.7, 0.2])
    with torch.no_grad():
        ours = policy.velocity(latents, sigma, cond)
        theirs = model(latents, sigma, cond["text_tokens"], cond["pooled"], cond["glyphs"])
        base = load_model(tmp_path / "m")(latents, sigma, cond["text_tokens"], cond["pooled"], cond["glyphs"])
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(base, ours)


def test_export_cli_writes_a_tiny_lora_checkpoint(tmp_path: Path) -> None:
    """`vgpo export` of a tiny-model LoRA checkpoint (as the trainer writes it) gives the file diffusers reads."""
    import json

    from safetensors.torch import load_file, save_file

    from vgpo import checkpoint
    from vgpo.cli import main as cli_main
    from vgpo.config import ModelConfig, json_ready
    from vgpo.models.tiny import TinyConfig, TinyFlowModel, load_tiny_policy, save_model

    torch.manual_seed(0)
    save_model(TinyFlowModel(TinyConfig(num_layers=1, num_attention_heads=2, attention_head_dim=8)), tmp_path / "m")
    policy = load_tiny_policy(tmp_path / "m", lora_rank=2)
    perturb_lora(policy)
    folder = checkpoint.checkpoint_dir(tmp_path / "run", 1)
    folder.mkdir(parents=True)
    save_file(policy.trainable_state_dict(), folder / checkpoint.TRAINABLE_FILE)
    model = ModelConfig(kind="tiny", path=str(tmp_path / "m"), lora_rank=2, device="cpu")
    meta = {
        "format_version": checkpoint.FORMAT_VERSION,
        "iteration": 1,
        "fingerprint": policy.fingerprint(),
        "model": json_ready(model.__dict__),
    }
    (folder / checkpoint.META_FILE).write_text(json.dumps(meta))
    assert cli_main(["export", str(tmp_path / "run"), str(tmp_path / "out"), "--no-ema"]) == 0
    exported = load_file(tmp_path / "out" / LORA_FILE)
    trained = policy.trainable_state_dict()  # keys "transformer.<module>.lora_A.default.weight"
    assert {key.replace(".weight", ".default.weight") for key in exported} == set(trained)
    for key, value in exported.items():
        assert torch.equal(value, trained[key.replace(".weight", ".default.weight")])
