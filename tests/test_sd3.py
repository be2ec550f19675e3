"""The SD3 adapter on a tiny random-weight pipeline built and saved in a fixture (no download, ever)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
from safetensors.torch import load_file, save_file

from fixtures_sd3 import TINY_RESOLUTION, TOKEN_LENGTH, build_tiny_sd3_pipeline
from vgpo import checkpoint
from vgpo.cli import main as cli_main
from vgpo.config import ModelConfig, config_from_dict, json_ready, load_config
from vgpo.errors import CheckpointError
from vgpo.models.base import export_lora
from vgpo.models.lora import adapters_disabled, add_lora, lora_parameters
from vgpo.models.sd3 import SD3Adapter, SD3Policy, load_sd3_policy, sd3_policy
from vgpo.policy import FlowPolicy, select_rows

PROMPTS = ["a red cube", "a photo of a cat"]


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    """One torch thread: the tiny model's ops are too small to split, and on a shared 2-core machine two
    threads per op spin against other processes (measured 25x slower per velocity call)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_sd3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-sd3")
    build_tiny_sd3_pipeline(folder)
    return folder


def load_policy(folder: Path, **kwargs: object) -> SD3Policy:
    options: dict = {
        "dtype": "fp32",
        "device": "cpu",
        "resolution": TINY_RESOLUTION,
        "max_sequence_length": TOKEN_LENGTH,
        "lora_rank": 4,
        "lora_alpha": 8,
    }
    options.update(kwargs)
    return load_sd3_policy(folder, **options)


@pytest.fixture
def policy(tiny_sd3: Path) -> SD3Policy:
    torch.manual_seed(0)
    return load_policy(tiny_sd3)


def perturb_lora(policy: SD3Policy, value: float = 0.05) -> None:
    """Move every LoRA B off zero, as training would (the adapters start as a no-op)."""
    with torch.no_grad():
        for name, parameter in policy.denoiser.named_parameters():
            if ".lora_B." in name:
                parameter.fill_(value)


def test_loads_from_folder_with_frozen_encoders(policy: SD3Policy, tiny_sd3: Path) -> None:
    assert isinstance(policy, FlowPolicy)
    assert policy.latent_shape == (4, TINY_RESOLUTION, TINY_RESOLUTION)
    assert policy.device == torch.device("cpu")
    fingerprint = policy.fingerprint()
    assert fingerprint.startswith(f"sd3:{tiny_sd3.name}:")
    assert "lora(r=4,alpha=8," in fingerprint and "to_add_out" in fingerprint
    pipeline = policy.adapter.pipeline
    for frozen in (pipeline.vae, pipeline.text_encoder, pipeline.text_encoder_2, pipeline.text_encoder_3):
        assert not frozen.training
        assert not any(parameter.requires_grad for parameter in frozen.parameters())
    assert policy.denoiser.is_gradient_checkpointing


def test_missing_weights_raise_a_checkpoint_error_naming_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-sd3"
    with pytest.raises(CheckpointError) as caught:
        load_sd3_policy(missing, device="cpu")
    message = str(caught.value)
    assert str(missing) in message
    assert "never downloads" in message and "stable-diffusion-3.5-medium --local-dir" in message


def test_sigma_schedule_is_the_schedulers_with_its_shift(policy: SD3Policy, tiny_sd3: Path) -> None:
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(tiny_sd3, subfolder="scheduler")
    assert scheduler.config.shift == 3.0
    for steps in (1, 10, 40):
        sigmas = policy.sigma_schedule(steps)
        scheduler.set_timesteps(steps)
        assert sigmas.dtype == torch.float32 and sigmas.device.type == "cpu"
        assert sigmas.shape == (steps + 1,)
        torch.testing.assert_close(sigmas, scheduler.sigmas.float(), rtol=0, atol=0)
        assert sigmas[0] == 1.0 and sigmas[-1] == 0.0
        assert bool((sigmas[1:] < sigmas[:-1]).all())
    # the shift is in: an unshifted 10-step schedule would put sigma 0.5 near the middle step
    assert policy.sigma_schedule(10)[5] > 0.6


def test_velocity_uses_the_pipelines_timestep_convention(policy: SD3Policy) -> None:
    """velocity(sigma_i) equals the transformer call the stock pipeline makes at step i."""
    cond = policy.encode_prompts(PROMPTS)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(policy.adapter.pipeline.scheduler.config)
    scheduler.set_timesteps(4)
    latents = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(1))
    step = 2
    sigma = scheduler.sigmas[step].expand(2)
    with torch.no_grad():
        ours = policy.velocity(latents, sigma, cond)
        stock = policy.denoiser(
            hidden_states=latents,
            timestep=scheduler.timesteps[step].expand(2),
            encoder_hidden_states=cond["prompt_embeds"],
            pooled_projections=cond["pooled"],
            return_dict=False,
        )[0]
    torch.testing.assert_close(ours, stock)


def test_cfg_is_one_batched_call_equal_to_uncond_plus_scaled_difference(policy: SD3Policy) -> None:
    cond = policy.encode_prompts(PROMPTS)
    assert all(value.shape[0] == 2 for value in cond.values())
    latents = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor([1.0, 0.4])
    calls: list[int] = []
    hook = policy.denoiser.register_forward_hook(lambda module, args, kwargs: calls.append(1))
    with torch.no_grad():
        guided = policy.velocity(latents, sigma, cond, guidance_scale=4.5)
    hook.remove()
    assert calls == [1]
    assert guided.shape == latents.shape and guided.dtype == torch.float32
    negative = {
        "prompt_embeds": cond["negative_prompt_embeds"],
        "pooled": cond["negative_pooled"],
        "negative_prompt_embeds": cond["negative_prompt_embeds"],
        "negative_pooled": cond["negative_pooled"],
    }
    with torch.no_grad():
        conditional = policy.velocity(latents, sigma, cond)
        unconditional = policy.velocity(latents, sigma, negative)
    torch.testing.assert_close(guided, unconditional + 4.5 * (conditional - unconditional), rtol=1e-4, atol=1e-5)
    # rows are independent: selecting rows of cond selects rows of the velocity
    with torch.no_grad():
        second = policy.velocity(latents[1:], sigma[1:], select_rows(cond, torch.tensor([1])), guidance_scale=4.5)
    torch.testing.assert_close(second, guided[1:], rtol=1e-4, atol=1e-5)


def test_reference_is_the_base_model_with_lora_disabled(policy: SD3Policy, tiny_sd3: Path) -> None:
    cond = policy.encode_prompts(PROMPTS)
    latents = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(3))
    sigma = torch.tensor([0.9, 0.3])
    with torch.no_grad():
        base = policy.velocity(latents, sigma, cond, guidance_scale=4.5)  # LoRA B = 0: still the base model
        with policy.reference():
            reference = policy.velocity(latents, sigma, cond, guidance_scale=4.5)
        perturb_lora(policy)
        trained = policy.velocity(latents, sigma, cond, guidance_scale=4.5)
        with policy.reference():
            reference_after = policy.velocity(latents, sigma, cond, guidance_scale=4.5)
        trained_again = policy.velocity(latents, sigma, cond, guidance_scale=4.5)
    torch.testing.assert_close(reference, base, rtol=0, atol=0)
    assert (trained - base).abs().max() > 1e-3
    torch.testing.assert_close(reference_after, base, rtol=0, atol=0)
    torch.testing.assert_close(trained_again, trained, rtol=0, atol=0)  # the context re-enables the adapters


def test_only_lora_is_trainable_and_receives_gradients(policy: SD3Policy) -> None:
    trainable = list(policy.trainable_parameters())
    names = {name for name, p in policy.denoiser.named_parameters() if p.requires_grad}
    assert names and all(".lora_A." in name or ".lora_B." in name for name in names)
    assert len(trainable) == len(names)
    assert all(p.dtype == torch.float32 for p in trainable)
    targets = {name.split(".lora_")[0].split(".")[-1] for name in names}
    assert targets == {"to_q", "to_k", "to_v", "0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"}

    cond = policy.encode_prompts(PROMPTS)
    latents = torch.randn(2, *policy.latent_shape)
    policy.velocity(latents, torch.tensor([0.8, 0.5]), cond, guidance_scale=4.5).square().mean().backward()
    assert all(p.grad is not None for p in trainable)
    assert any(p.grad.abs().sum() > 0 for p in trainable if p.grad is not None)
    for frozen in (policy.denoiser, policy.adapter.vae, policy.adapter.pipeline.text_encoder_3):
        assert all(p.grad is None for p in frozen.parameters() if not p.requires_grad)


def test_trainable_state_dict_round_trip_and_bad_keys(policy: SD3Policy, tiny_sd3: Path) -> None:
    perturb_lora(policy, 0.02)
    state = policy.trainable_state_dict()
    assert all(".lora_" in key for key in state) and len(state) == len(list(policy.trainable_parameters()))
    other = load_policy(tiny_sd3)
    other.load_trainable_state_dict(state)
    for key, value in other.trainable_state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    broken = dict(state)
    removed = next(iter(broken))
    del broken[removed]
    broken["not.a.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="missing") as caught:
        other.load_trainable_state_dict(broken)
    assert removed in str(caught.value) and "not.a.weight" in str(caught.value)


def test_decode_uses_vae_scaling_and_shift_and_is_batch_invariant(tiny_sd3: Path) -> None:
    policy = load_policy(tiny_sd3, decode_batch_size=2)
    latents = torch.randn(5, *policy.latent_shape, generator=torch.Generator().manual_seed(4))
    images = policy.decode(latents)
    assert images.shape == (5, 3, TINY_RESOLUTION, TINY_RESOLUTION) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    vae = policy.adapter.vae
    with torch.no_grad():
        by_hand = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor).sample
    torch.testing.assert_close(images, (by_hand / 2 + 0.5).clamp(0, 1), rtol=1e-5, atol=1e-6)


def test_mixed_precision_returns_float32_velocity_with_float32_lora(tiny_sd3: Path) -> None:
    policy = load_policy(tiny_sd3, dtype="bf16")
    assert policy.denoiser.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in policy.trainable_parameters())
    cond = policy.encode_prompts(PROMPTS[:1])
    velocity = policy.velocity(torch.randn(1, *policy.latent_shape), torch.tensor([0.7]), cond, guidance_scale=4.5)
    assert velocity.dtype == torch.float32 and torch.isfinite(velocity).all()
    assert policy.fingerprint() == load_policy(tiny_sd3).fingerprint()  # dtype is not part of the layout


def test_full_finetune_reference_keeps_the_initial_weights(tiny_sd3: Path) -> None:
    policy = load_policy(tiny_sd3, full_finetune=True, gradient_checkpointing=False)
    assert policy.fingerprint().endswith(":full")
    named = dict(policy.denoiser.named_parameters())
    assert len(list(policy.trainable_parameters())) == len(named)
    cond = policy.encode_prompts(PROMPTS[:1])
    latents, sigma = torch.randn(1, *policy.latent_shape), torch.tensor([0.5])
    with torch.no_grad():
        before = policy.velocity(latents, sigma, cond)
        named["proj_out.weight"].add_(0.1)
        with policy.reference():
            reference = policy.velocity(latents, sigma, cond)
        after = policy.velocity(latents, sigma, cond)
    torch.testing.assert_close(reference, before, rtol=0, atol=0)
    assert (after - before).abs().max() > 1e-3


def optimiser_step(policy: SD3Policy) -> None:
    """One AdamW step on a velocity loss: moves every LoRA B off zero, as training does."""
    optimiser = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-2)
    cond = policy.encode_prompts(PROMPTS)
    latents = torch.randn(2, *policy.latent_shape, generator=torch.Generator().manual_seed(5))
    policy.velocity(latents, torch.tensor([0.9, 0.6]), cond, guidance_scale=4.5).square().mean().backward()
    optimiser.step()


def generate(pipeline: Any) -> torch.Tensor:
    return pipeline(
        PROMPTS[0],
        num_inference_steps=3,
        height=TINY_RESOLUTION,
        width=TINY_RESOLUTION,
        guidance_scale=4.5,
        max_sequence_length=TOKEN_LENGTH,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).images


def test_exported_lora_loads_into_a_stock_pipeline_and_changes_it(
    policy: SD3Policy, tiny_sd3: Path, tmp_path: Path
) -> None:
    optimiser_step(policy)
    out = export_lora(policy, tmp_path / "lora")
    assert (out / "pytorch_lora_weights.safetensors").is_file()

    stock = StableDiffusion3Pipeline.from_pretrained(tiny_sd3)
    stock.set_progress_bar_config(disable=True)
    base_images = generate(stock)
    stock.load_lora_weights(out)
    lora_images = generate(stock)
    assert (lora_images - base_images).abs().max() > 1e-3

    # the stock pipeline's transformer is now our trained policy, alpha / rank scale included
    cond = policy.encode_prompts(PROMPTS)
    latents = torch.randn(2, *policy.latent_shape)
    sigma = torch.tensor([0.8, 0.2])
    with torch.no_grad():
        ours = policy.velocity(latents, sigma, cond)
        theirs = stock.transformer(
            hidden_states=latents,
            timestep=sigma * 1000,
            encoder_hidden_states=cond["prompt_embeds"],
            pooled_projections=cond["pooled"],
            return_dict=False,
        )[0]
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)


def write_checkpoint(policy: SD3Policy, base: Path, run_dir: Path, iteration: int, ema_value: float) -> Path:
    """A checkpoint as the trainer writes it (vgpo.checkpoint's layout), without the optimizer state; its EMA
    holds ``ema_value`` in every LoRA B, under the same names as the trainable weights."""
    folder = checkpoint.checkpoint_dir(run_dir, iteration)
    folder.mkdir(parents=True)
    state = policy.trainable_state_dict()
    save_file(state, folder / checkpoint.TRAINABLE_FILE)
    ema = {name: torch.full_like(value, ema_value) if ".lora_B." in name else value for name, value in state.items()}
    save_file(ema, folder / checkpoint.EMA_FILE)
    model = ModelConfig(kind="sd3", path=str(base), lora_rank=4, lora_alpha=8, resolution=TINY_RESOLUTION, device="cpu")
    meta = {
        "format_version": checkpoint.FORMAT_VERSION,
        "iteration": iteration,
        "fingerprint": policy.fingerprint(),
        "model": json_ready(model.__dict__),
    }
    (folder / checkpoint.META_FILE).write_text(json.dumps(meta))
    return folder


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "vgpo.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_export_cli_from_a_run_folder(
    policy: SD3Policy, tiny_sd3: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    perturb_lora(policy)
    write_checkpoint(policy, tiny_sd3, tmp_path / "run", 1, ema_value=0.01)
    newest = write_checkpoint(policy, tiny_sd3, tmp_path / "run", 2, ema_value=0.03)
    trained = policy.trainable_state_dict()

    def exported_as_trained(out: Path) -> dict[str, torch.Tensor]:
        """The exported file keyed as trainable_state_dict() ("transformer." prefix off, adapter name in)."""
        exported = load_file(out / "pytorch_lora_weights.safetensors")
        renamed = {
            key.removeprefix("transformer.").replace(".weight", ".default.weight"): value
            for key, value in exported.items()
        }
        assert set(renamed) == set(trained)
        return renamed

    # the verb end to end in a subprocess: the newest checkpoint of the run, its EMA by default
    result = run_cli("export", str(tmp_path / "run"), str(tmp_path / "ema"))
    assert result.returncode == 0, result.stderr
    assert newest.name in result.stdout
    for key, value in exported_as_trained(tmp_path / "ema").items():
        expected = torch.full_like(value, 0.03) if ".lora_B." in key else trained[key]
        torch.testing.assert_close(value, expected, rtol=0, atol=0)

    assert cli_main(["export", str(newest), str(tmp_path / "raw"), "--no-ema"]) == 0
    for key, value in exported_as_trained(tmp_path / "raw").items():
        torch.testing.assert_close(value, trained[key], rtol=0, atol=0)

    moved = shutil.copytree(tiny_sd3, tmp_path / "moved-base")  # the base model moved since training
    assert cli_main(["export", str(newest), str(tmp_path / "moved"), "--base", str(moved)]) == 0
    assert (tmp_path / "moved" / "pytorch_lora_weights.safetensors").is_file()

    capsys.readouterr()
    assert cli_main(["export", str(tmp_path / "nothing-here"), str(tmp_path / "out")]) == 2
    assert "nothing-here" in capsys.readouterr().err


@pytest.mark.parametrize("task", ["geneval", "ocr", "pickscore"])
def test_sd3_presets_carry_the_baseline_recipe(task: str) -> None:
    presets = Path(__file__).resolve().parents[1] / "configs" / "sd3"
    with_kl = load_config(presets / f"{task}_kl.yaml")
    without_kl = load_config(presets / f"{task}_nokl.yaml")
    assert with_kl.algorithm.kl_beta == (0.01 if task == "pickscore" else 0.04)
    assert without_kl.algorithm.kl_beta == 0.0
    for config in (with_kl, without_kl):
        model, sampling = config.model, config.sampling
        assert (model.kind, model.lora_rank, model.lora_alpha, model.resolution) == ("sd3", 32, 64, 512)
        assert (sampling.num_steps, sampling.eval_num_steps, sampling.guidance_scale) == (10, 40, 4.5)
        assert (sampling.noise_level, sampling.group_size) == (0.7, 24)
        assert (config.algorithm.clip_range, config.algorithm.train_steps(10)) == (1e-4, 9)


def redness(images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
    """A toy reward with spread inside every group: mean red minus mean blue, [N]."""
    return (images[:, 0] - images[:, 2]).mean(dim=(1, 2))


@pytest.mark.filterwarnings("ignore:sampling.noise_level=0.7 with DanceGRPO")  # the presets' noise, on purpose
@pytest.mark.parametrize(
    "variant",
    ["flow_grpo", "vgpo", "flow_grpo_fast", "mixgrpo", "dance_grpo", "flow_grpo_cps", "grpo_guard", "tempflow_grpo"],
)
def test_two_training_iterations_change_only_the_lora(policy: SD3Policy, tmp_path: Path, variant: str) -> None:
    # every method runs on SD3 (CFG, its shifted schedule, the KL to the LoRA-off reference); windows of 1 of 3 steps
    from vgpo.tasks import get_task
    from vgpo.trainer import Trainer

    config = config_from_dict(
        {
            "model": {"kind": "sd3", "lora_rank": 4, "lora_alpha": 8, "resolution": TINY_RESOLUTION},
            "sampling": {"num_steps": 3, "guidance_scale": 4.5, "group_size": 2, "prompts_per_iteration": 2},
            "algorithm": {"variant": variant, "kl_beta": 0.04, "clip_range": 0.2, "window_size": 1},
            "optim": {"learning_rate": 1e-2, "micro_batch_size": 4},
            "run": {"iterations": 2, "progress": False, "tensorboard": False},
        }
    )
    trainer = Trainer(config, tmp_path / "run", policy=policy, task=get_task("compositional"), reward=redness)
    modules = {"transformer": policy.denoiser, "vae": policy.adapter.vae, "t5": policy.adapter.pipeline.text_encoder_3}
    before = {
        f"{module}.{name}": value.detach().clone()
        for module, model in modules.items()
        for name, value in model.named_parameters()
    }
    records = [trainer.train_iteration(iteration) for iteration in (1, 2)]
    assert all(record["kl"] >= 0 and torch.isfinite(torch.tensor(record["loss"])) for record in records)
    assert records[1]["kl"] > 0  # after one update the policy has left the reference (LoRA off)
    after = {
        f"{module}.{name}": value.detach()
        for module, model in modules.items()
        for name, value in model.named_parameters()
    }
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("transformer.") and ".lora_" in name for name in changed)
    assert any(".lora_B." in name for name in changed)


def test_lora_helper_on_a_plain_module() -> None:
    """vgpo.models.lora works on any nn.Module (no diffusers mixin): no-op at start, switchable off."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).double()
    inputs = torch.randn(3, 4, dtype=torch.float64)
    base = model(inputs).detach()
    add_lora(model, targets=["0", "2"], rank=2, alpha=4)
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {
        name for name, _ in model.named_parameters() if ".lora_" in name
    }
    torch.testing.assert_close(model(inputs), base, rtol=0, atol=0)
    with torch.no_grad():
        for parameter in lora_parameters(model):
            parameter.fill_(0.5)
    assert (model(inputs) - base).abs().max() > 1e-3
    with adapters_disabled(model):
        torch.testing.assert_close(model(inputs), base, rtol=0, atol=0)
    with pytest.raises(ValueError, match="missing"):
        add_lora(torch.nn.Sequential(torch.nn.Linear(2, 2)), targets=["missing"], rank=2, alpha=2)


def test_euler_sampling_through_the_policy_reproduces_the_stock_pipeline(policy: SD3Policy, tiny_sd3: Path) -> None:
    """End to end: schedule, timestep convention, CFG and decoding together equal StableDiffusion3Pipeline."""
    stock = StableDiffusion3Pipeline.from_pretrained(tiny_sd3)
    stock.set_progress_bar_config(disable=True)
    noise = torch.randn(1, *policy.latent_shape, generator=torch.Generator().manual_seed(6))
    expected = stock(
        PROMPTS[0],
        num_inference_steps=4,
        height=TINY_RESOLUTION,
        width=TINY_RESOLUTION,
        guidance_scale=4.5,
        max_sequence_length=TOKEN_LENGTH,
        latents=noise.clone(),
        output_type="pt",
    ).images

    cond = policy.encode_prompts(PROMPTS[:1])
    sigmas = policy.sigma_schedule(4)
    latents = noise.clone()
    with torch.no_grad():
        for step in range(4):
            velocity = policy.velocity(latents, sigmas[step].expand(1), cond, guidance_scale=4.5)
            latents = latents + (sigmas[step + 1] - sigmas[step]) * velocity  # the ODE (Euler) step, dt < 0
    torch.testing.assert_close(policy.decode(latents), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.slow
def test_sd3_medium_shaped_iteration_time_and_memory_on_gpu(tmp_path: Path) -> None:
    """Benchmark (GPU only): SD3.5-Medium-shaped random transformer + VAE, 512 px, T = 10, G = 8, LoRA r 32,
    CFG 4.5, VGPO with KL. Prints seconds per phase and peak GPU memory of the second iteration.

    Run: pytest tests/test_sd3.py -m gpu -k medium_shaped -s
    """
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from fixtures_sd3 import build_sd3_medium_shaped_pipeline
    from vgpo.tasks import get_task
    from vgpo.trainer import Trainer

    torch.set_num_threads(8)
    pipeline = build_sd3_medium_shaped_pipeline("cuda", torch.bfloat16)
    policy = sd3_policy(pipeline, base_model="sd3.5-medium-shaped-random", resolution=512, max_sequence_length=256)
    config = config_from_dict(
        {
            "model": {"kind": "sd3", "lora_rank": 32, "lora_alpha": 64, "dtype": "bf16", "resolution": 512},
            "sampling": {"num_steps": 10, "guidance_scale": 4.5, "group_size": 8, "prompts_per_iteration": 1},
            "algorithm": {"variant": "vgpo", "kl_beta": 0.04},
            "optim": {"micro_batch_size": 8},
            "run": {"iterations": 2, "progress": False, "tensorboard": False},
        }
    )
    trainer = Trainer(config, tmp_path / "run", policy=policy, task=get_task("compositional"), reward=redness)
    trainer.train_iteration(1)  # warm-up (kernels, allocator)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    record = trainer.train_iteration(2)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30
    figures = {"seconds": record["seconds"], "peak_gib": round(peak, 2), "device": torch.cuda.get_device_name()}
    print(json.dumps(figures))
    assert peak < 80


def test_build_policy_passes_the_configs_loader_options(tiny_sd3: Path) -> None:
    from vgpo.builders import build_policy

    model = ModelConfig(
        kind="sd3",
        path=str(tiny_sd3),
        lora_rank=2,
        lora_targets=["to_q", "to_v"],
        negative_prompt="blurry",
        max_sequence_length=TOKEN_LENGTH,
        decode_batch_size=3,
        resolution=TINY_RESOLUTION,
        dtype="fp32",
        device="cpu",
    )
    policy = build_policy(model)
    assert isinstance(policy.adapter, SD3Adapter)
    assert (policy.adapter.negative_prompt, policy.adapter.max_sequence_length, policy.decode_batch_size) == (
        "blurry",
        TOKEN_LENGTH,
        3,
    )
    adapted = {
        name.split(".lora_A.")[0].rsplit(".", 1)[-1]
        for name, _ in policy.denoiser.named_parameters()
        if ".lora_A." in name
    }
    assert adapted == {"to_q", "to_v"}


def test_lora_target_that_matches_nothing_is_refused() -> None:
    from vgpo.errors import ConfigError

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.to_q = torch.nn.Linear(4, 4)
            self.to_v = torch.nn.Linear(4, 4)

    with pytest.raises(ConfigError, match=r"LoRA target\(s\) \['to_vv'\] match no sub-module"):
        add_lora(Block(), targets=["to_q", "to_vv"], rank=2, alpha=2.0)
