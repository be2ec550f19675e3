"""SD3.5-Medium-shaped benchmark on one GPU (issue 14): seconds per phase, peak memory and images per second of
Flow-GRPO and VGPO iterations, the first update's PPO ratio in bf16, the VAE's cost of decoding TCRM's N x T step
projections, and the largest update micro-batch that fits.

    python bench/sd3_gpu.py --out $OUT                               # the GPU machine (docs/benchmarks.md)
    python bench/sd3_gpu.py --size tiny --device cpu --out /tmp/b    # the same code on the tiny test pipeline

The pipeline has random weights (`tests/sd3_random.py`, nothing downloaded): SD3.5-Medium's transformer and
VAE, its text encoders at full width and token count but one layer. The prompts are the compositional task's and
the reward a toy on the GPU (mean red minus mean blue), so "reward" times the VAE decode, not a reward model.
Each training figure is the second iteration of a fresh Trainer (the first warms kernels and the allocator), with
`task.reward_workers` 0 by default so that decoding is its own phase, not hidden inside sampling.

Measurements run in the order train -> decode -> microbatch. One that would end after ``--budget-s`` (estimated
from the last one of its kind) is not started and is recorded as skipped; a failure (out of memory included) is
recorded and the next one runs. results.jsonl gains one JSON object per measurement as it ends, and results.md
is re-written after each, so a run killed at the device's 10-minute limit leaves everything it finished.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from vgpo.config import config_from_dict
from vgpo.models.diffusers_loading import DTYPES
from vgpo.models.sd3 import SD3Policy, sd3_policy
from vgpo.policy import select_rows
from vgpo.tasks import get_task
from vgpo.trainer import Trainer

PHASES = ("sample", "reward", "advantage", "update")
PARTS = ("train", "decode", "microbatch")
DECODERS = ("plain", "channels_last", "tiled", "tiny_vae", "compiled")  # compiled last: slowest to start
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for results.jsonl and results.md (on the GPU: $OUT)")
    parser.add_argument("--size", choices=("medium", "tiny"), default="medium", help="SD3.5-Medium-shaped or tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="weights' dtype (LoRA stays fp32)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure")
    parser.add_argument("--budget-s", type=float, default=540.0, help="start no measurement that would end later")
    parser.add_argument("--variants", nargs="+", default=["flow_grpo", "vgpo"])
    parser.add_argument("--group-sizes", nargs="+", type=int, default=[8, 24], help="G of the training runs")
    parser.add_argument("--prompts-per-iteration", type=int, default=1, help="B of the training runs (N = B x G)")
    parser.add_argument("--steps", type=int, default=10, help="T, SDE steps per rollout")
    parser.add_argument("--guidance-scale", type=float, default=4.5)
    parser.add_argument("--lora-rank", type=int, default=32, help="LoRA rank (alpha = 2 x rank, as the presets)")
    parser.add_argument("--kl-beta", type=float, default=0.04)
    parser.add_argument("--micro-batch-size", type=int, default=8, help="optim.micro_batch_size of the training runs")
    parser.add_argument("--train-decode-batch-size", type=int, default=8, help="model.decode_batch_size of the runs")
    parser.add_argument("--reward-workers", type=int, default=0, help="task.reward_workers of the training runs")
    parser.add_argument("--decoders", nargs="+", choices=DECODERS, default=list(DECODERS))
    parser.add_argument("--decode-batch-sizes", nargs="+", type=int, default=[8, 16, 32])
    parser.add_argument("--decode-images", type=int, default=64, help="images decoded per timed decode measurement")
    parser.add_argument(
        "--update-micro-batches", nargs="+", type=int, default=[4, 8, 16, 32, 48, 64, 96, 128], help="searched"
    )
    parser.add_argument("--resolution", type=int, help="image side in pixels (default: 512 medium, 16 tiny)")
    parser.add_argument("--layers", type=int, default=24, help="transformer blocks of the medium pipeline (smoke runs)")
    args = parser.parse_args(argv)
    args.device = torch.device(args.device)
    if args.resolution is None:
        args.resolution = 512 if args.size == "medium" else 16
    return args


# ----------------------------------------------------------------------------------------------------------
# Results: one JSON line per measurement, and a markdown summary re-written after each.


class Recorder:
    """Writes each row as it comes and decides whether the next measurement still fits in the time budget."""

    def __init__(self, out: Path, budget_s: float) -> None:
        self.out = out
        self.out.mkdir(parents=True, exist_ok=True)
        self.budget_s = budget_s
        self.start = time.perf_counter()
        self.rows: list[dict[str, Any]] = []
        self.rates: dict[str, float] = {}  # seconds per unit of size of the last measurement of each kind
        (self.out / "results.jsonl").write_text("")

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def add(self, row: dict[str, Any]) -> None:
        row = {**row, "at_s": round(self.elapsed(), 1)}
        self.rows.append(row)
        with (self.out / "results.jsonl").open("a") as stream:
            stream.write(json.dumps(row) + "\n")
        (self.out / "results.md").write_text(markdown(self.rows))
        print(json.dumps(row), flush=True)

    def allows(self, kind: str, name: str, size: float, estimate_s: float | None = None) -> bool:
        """True when the measurement should run; else records it as skipped. ``size`` scales the last rate."""
        estimate = estimate_s if estimate_s is not None else self.rates.get(kind, 0.0) * size
        left = self.budget_s - self.elapsed()
        if estimate <= left:
            return True
        self.add(
            {
                "kind": "skipped",
                "part": kind,
                "name": name,
                "reason": f"budget: {left:.0f} s left, ~{estimate:.0f} s needed",
            }
        )
        return False

    def learn(self, kind: str, seconds: float, size: float) -> None:
        self.rates[kind] = seconds / max(size, 1e-9)


def failure(part: str, name: str, error: BaseException) -> dict[str, Any]:
    """A row for a measurement that raised; out-of-memory is named as such."""
    kind = "out_of_memory" if isinstance(error, OUT_OF_MEMORY) else type(error).__name__
    last = traceback.format_exception_only(type(error), error)[-1].strip()
    return {"kind": "error", "part": part, "name": name, "error": kind, "message": last[:500]}


# ----------------------------------------------------------------------------------------------------------
# Device helpers: peak memory is CUDA's; on a CPU it is None and the rows say why.


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float | None]]:
    """Yields a dict whose ``peak_gib`` is filled on exit: torch.cuda.max_memory_allocated over the block."""
    figures: dict[str, float | None] = {"peak_gib": None}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    yield figures
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        figures["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def environment(args: argparse.Namespace) -> dict[str, Any]:
    import diffusers
    import peft
    import transformers

    row: dict[str, Any] = {
        "kind": "environment",
        "device": torch.cuda.get_device_name(args.device)
        if args.device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "command": " ".join(["python", *sys.argv]),
        "commit": git_commit(),
        "size": args.size,
        "dtype": args.dtype,
        "resolution": args.resolution,
        "layers": args.layers if args.size == "medium" else None,
    }
    if args.device.type == "cuda":
        row["device_memory_gib"] = round(torch.cuda.get_device_properties(args.device).total_memory / 2**30, 1)
    else:
        row["memory_note"] = "peak memory is measured on CUDA only (torch.cuda.max_memory_allocated); None here"
    return row


def git_commit() -> str | None:
    try:
        found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return found.stdout.strip() or None


# ----------------------------------------------------------------------------------------------------------
# The policy and the toy reward.


def build_policy(args: argparse.Namespace) -> SD3Policy:
    """The SD3 policy with LoRA and gradient checkpointing, on the pipeline ``--size`` names."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the random pipelines, not installed
    from sd3_random import TOKEN_LENGTH, build_sd3_medium_shaped_pipeline, build_tiny_sd3_pipeline

    dtype = DTYPES[args.dtype]
    if args.size == "medium":
        pipeline = build_sd3_medium_shaped_pipeline(args.device, dtype, num_layers=args.layers)
        name, tokens = "sd3.5-medium-shaped-random", 256
    else:
        pipeline = build_tiny_sd3_pipeline().to(args.device, dtype)
        name, tokens = "sd3-tiny-random", TOKEN_LENGTH
    pipeline.set_progress_bar_config(disable=True)
    torch.manual_seed(0)
    return sd3_policy(
        pipeline,
        base_model=name,
        lora_rank=args.lora_rank,
        lora_alpha=2.0 * args.lora_rank,
        gradient_checkpointing=True,
        resolution=args.resolution,
        max_sequence_length=tokens,
        decode_batch_size=args.train_decode_batch_size,
    )


def redness(images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
    """A toy reward with spread inside every group: mean red minus mean blue, [N], on the images' device."""
    return (images[:, 0] - images[:, 2]).mean(dim=(1, 2))


def trainer_for(policy: SD3Policy, args: argparse.Namespace, variant: str, group_size: int, run_dir: str) -> Trainer:
    config = config_from_dict(
        {
            "model": {"kind": "sd3", "lora_rank": args.lora_rank, "lora_alpha": 2 * args.lora_rank},
            "task": {"reward_workers": args.reward_workers},
            "sampling": {
                "num_steps": args.steps,
                "guidance_scale": args.guidance_scale,
                "group_size": group_size,
                "prompts_per_iteration": args.prompts_per_iteration,
            },
            "algorithm": {"variant": variant, "kl_beta": args.kl_beta},
            "optim": {"micro_batch_size": args.micro_batch_size},
            "run": {"iterations": 2, "progress": False, "tensorboard": False},
        }
    )
    return Trainer(config, run_dir, policy=policy, task=get_task("compositional"), reward=redness)


# ----------------------------------------------------------------------------------------------------------
# 1. Training iterations: seconds per phase, peak memory, images per second, the first update's ratio.


def train_runs(policy: SD3Policy, args: argparse.Namespace, recorder: Recorder) -> None:
    for group_size in args.group_sizes:
        for variant in args.variants:
            samples = args.prompts_per_iteration * group_size
            name = f"{variant} G={group_size}"
            if not recorder.allows("train", name, samples):
                continue
            start = time.perf_counter()
            try:
                row = train_run(policy, args, variant, group_size)
            except Exception as error:
                recorder.add(failure("train", name, error))
                continue
            finally:
                release(args.device)
            recorder.learn("train", time.perf_counter() - start, samples)
            recorder.add(row)


def train_run(policy: SD3Policy, args: argparse.Namespace, variant: str, group_size: int) -> dict[str, Any]:
    """Two iterations of a fresh Trainer; the figures are the second's (the policy's LoRA carries over runs)."""
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = trainer_for(policy, args, variant, group_size, run_dir)
        warm_up = trainer.train_iteration(1)
        with peak_memory(args.device) as memory:
            start = time.perf_counter()
            record = trainer.train_iteration(2)
            synchronize(args.device)
            wall = time.perf_counter() - start
        del trainer
    samples = args.prompts_per_iteration * group_size
    return {
        "kind": "train",
        "variant": variant,
        "group_size": group_size,
        "prompts": args.prompts_per_iteration,
        "samples": samples,
        "steps": args.steps,
        "micro_batch_size": args.micro_batch_size,
        "seconds": {phase: record["seconds"].get(phase, 0.0) for phase in PHASES},
        "total_s": round(wall, 3),
        "images_per_s": round(samples / wall, 3),
        "peak_gib": memory["peak_gib"],
        "first_ratio_error": record["first_ratio_error"],
        "rollout_log_prob_gap": record["rollout_log_prob_gap"],
        "clip_fraction": record["clip_fraction"],
        "kl": record["kl"],
        "warm_up_s": round(sum(warm_up["seconds"].values()), 3),
    }


# ----------------------------------------------------------------------------------------------------------
# 2. Decoding step projections: the VAE's throughput per decode batch size, for a few ways of running it.


def decoder_variant(policy: SD3Policy, variant: str, args: argparse.Namespace) -> tuple[Any, torch.memory_format]:
    """The VAE to decode with (a copy where the variant changes it) and the latents' memory format."""
    if variant == "plain":
        return policy.adapter.vae, torch.contiguous_format
    if variant == "tiny_vae":
        # TAESD3's shape (diffusers' AutoencoderTiny defaults with SD3's 16 latent channels), random weights:
        # the cheap previewer REFERENCE.md suggests for the intermediate projections; timing only.
        from diffusers import AutoencoderTiny

        channels = int(policy.adapter.vae.config.latent_channels)
        tiny = {} if args.size == "medium" else {"decoder_block_out_channels": (8,) * 4, "upsampling_scaling_factor": 1}
        config = policy.adapter.vae.config
        vae = AutoencoderTiny(
            latent_channels=channels,
            scaling_factor=config.scaling_factor,
            shift_factor=config.shift_factor or 0.0,
            **tiny,
        )
        return vae.to(args.device, policy.adapter.vae.dtype).eval(), torch.contiguous_format
    vae = copy.deepcopy(policy.adapter.vae)
    if variant == "channels_last":
        return vae.to(memory_format=torch.channels_last), torch.channels_last
    if variant == "tiled":
        vae.use_tiling = True  # tiles of half the image side, so the 512 px image is cut (4 tiles, 25% overlap)
        vae.tile_sample_min_size = args.resolution // 2
        vae.tile_latent_min_size = args.resolution // 2 // policy.adapter.vae_scale_factor
        return vae, torch.contiguous_format
    if variant == "compiled":
        vae.decoder.compile()
        return vae, torch.contiguous_format
    raise ValueError(f"unknown decoder variant {variant!r}")


def decode_runs(policy: SD3Policy, args: argparse.Namespace, recorder: Recorder) -> None:
    tcrm_images = args.prompts_per_iteration * max(args.group_sizes) * args.steps  # N x T of the largest run
    for variant in args.decoders:
        if variant == "compiled" and args.device.type != "cuda":
            recorder.add(
                {
                    "kind": "skipped",
                    "part": "decode",
                    "name": variant,
                    "reason": "torch.compile is timed on CUDA only (minutes to compile on a CPU)",
                }
            )
            continue
        name = f"decoder {variant}"
        try:
            vae, memory_format = decoder_variant(policy, variant, args)
        except Exception as error:
            recorder.add(failure("decode", name, error))
            continue
        for batch in args.decode_batch_sizes:
            repeats = max(1, math.ceil(args.decode_images / batch))
            compile_estimate = 90.0 if variant == "compiled" else None  # seen elsewhere: a minute or so to compile
            if not recorder.allows("decode", f"{name} batch {batch}", batch * (repeats + 1), compile_estimate):
                break
            start = time.perf_counter()
            try:
                row = decode_run(policy, vae, memory_format, batch, repeats, args)
            except Exception as error:
                recorder.add(failure("decode", f"{name} batch {batch}", error))
                release(args.device)
                if isinstance(error, OUT_OF_MEMORY):
                    break  # larger batches will not fit either
                continue
            if variant != "compiled":  # compile time would inflate the estimate of the others
                recorder.learn("decode", time.perf_counter() - start, batch * (repeats + 1))
            row.update(
                decoder=variant,
                seconds_per_tcrm_batch=round(tcrm_images / row["images_per_s"], 3),
                tcrm_images=tcrm_images,
            )
            recorder.add(row)
        del vae
        release(args.device)


def decode_run(
    policy: SD3Policy, vae: Any, memory_format: torch.memory_format, batch: int, repeats: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Decode ``repeats`` batches of ``batch`` random latents through the policy's decode (the trainer's path)."""
    latents = torch.randn((batch, *policy.latent_shape), device=args.device).contiguous(memory_format=memory_format)
    saved = policy.adapter.vae, policy.decode_batch_size
    policy.adapter.vae, policy.decode_batch_size = vae, batch
    try:
        start = time.perf_counter()
        policy.decode(latents)  # warm-up: kernels, autotuning, compilation
        synchronize(args.device)
        warm_up = time.perf_counter() - start
        with peak_memory(args.device) as memory:
            start = time.perf_counter()
            for _ in range(repeats):
                images = policy.decode(latents)
            synchronize(args.device)
            seconds = time.perf_counter() - start
    finally:
        policy.adapter.vae, policy.decode_batch_size = saved
    return {
        "kind": "decode",
        "batch": batch,
        "images": batch * repeats,
        "image_side": int(images.shape[-1]),
        "seconds": round(seconds, 4),
        "images_per_s": round(batch * repeats / seconds, 2),
        "peak_gib": memory["peak_gib"],
        "warm_up_s": round(warm_up, 3),
    }


# ----------------------------------------------------------------------------------------------------------
# 3. The largest update micro-batch that fits: one update term (forward with CFG, reference forward for the
# KL, backward through the checkpointed transformer), as Trainer.update runs it, for growing micro-batches.


def microbatch_runs(policy: SD3Policy, args: argparse.Namespace, recorder: Recorder) -> None:
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = trainer_for(policy, args, "vgpo", max(args.group_sizes), run_dir)
        cond_one = policy.encode_prompts(["a photo of a red cube and a blue cat"])  # 1 row
        sigmas = policy.sigma_schedule(args.steps)
        largest = None
        for size in sorted(args.update_micro_batches):
            name = f"micro-batch {size}"
            if not recorder.allows("microbatch", name, size):
                break
            start = time.perf_counter()
            try:
                row = update_term(trainer, cond_one, sigmas, size, args)
            except Exception as error:
                trainer.optimizer.zero_grad(set_to_none=True)
                recorder.add(failure("microbatch", name, error))
                release(args.device)
                if isinstance(error, OUT_OF_MEMORY):
                    break
                continue
            recorder.learn("microbatch", time.perf_counter() - start, size)
            largest = size
            recorder.add(row)
        recorder.add(
            {"kind": "microbatch_largest", "largest_fitting": largest, "searched": sorted(args.update_micro_batches)}
        )
        del trainer
    release(args.device)


def update_term(
    trainer: Trainer, cond_one: dict[str, torch.Tensor], sigmas: torch.Tensor, size: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One (micro-batch, step) term of the update, twice; the figures are the second's."""
    from vgpo.math import gaussian_mean_kl

    policy = trainer.policy
    device = args.device
    cond = select_rows(cond_one, torch.zeros(size, dtype=torch.long))  # [m] rows of the same prompt
    step = args.steps // 2
    sigma = sigmas[step].expand(size).to(device)
    sigma_next = sigmas[step + 1].expand(size).to(device)
    x = torch.randn((size, *policy.latent_shape), device=device)
    x_next = x + 0.01 * torch.randn_like(x)
    seconds = 0.0
    with peak_memory(device) as memory:
        for _ in range(2):
            trainer.optimizer.zero_grad(set_to_none=True)
            synchronize(device)
            start = time.perf_counter()
            model = trainer.step_model()
            step = model.transition(x, x_next, sigma, sigma_next, cond)
            log_prob, mean, std = step.log_prob, step.mean, step.std
            with model.reference():
                reference_mean = model.transition(x, x_next, sigma, sigma_next, cond).mean
            loss = -log_prob.mean() + args.kl_beta * gaussian_mean_kl(mean, reference_mean, std).mean()
            loss.backward()
            synchronize(device)
            seconds = time.perf_counter() - start
    trainer.optimizer.zero_grad(set_to_none=True)
    return {
        "kind": "microbatch",
        "micro_batch": size,
        "transformer_rows": 2 * size if args.guidance_scale > 1 else size,
        "seconds_per_term": round(seconds, 4),
        "peak_gib": memory["peak_gib"],
    }


# ----------------------------------------------------------------------------------------------------------
# The markdown summary.


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["# SD3 benchmark (bench/sd3_gpu.py)", ""]
    for row in rows:
        if row["kind"] == "environment":
            lines += [f"- {key}: {value}" for key, value in row.items() if key not in ("kind", "at_s")]
            lines.append("")
    table(
        lines,
        rows,
        "train",
        "Training iterations (the second of two; seconds per phase)",
        ["variant", "G", "N", *PHASES, "total s", "images/s", "peak GiB", "first ratio error", "rollout log-prob gap"],
        lambda r: [
            r["variant"],
            r["group_size"],
            r["samples"],
            *(f"{r['seconds'][p]:.3f}" for p in PHASES),
            f"{r['total_s']:.3f}",
            f"{r['images_per_s']:.3f}",
            r["peak_gib"],
            f"{r['first_ratio_error']:.2e}",
            f"{r['rollout_log_prob_gap']:.2e}",
        ],
    )
    table(
        lines,
        rows,
        "decode",
        "VAE decode of step projections",
        ["decoder", "batch", "image side", "images/s", "s per N x T images", "peak GiB", "warm-up s"],
        lambda r: [
            r["decoder"],
            r["batch"],
            r["image_side"],
            r["images_per_s"],
            f"{r['seconds_per_tcrm_batch']} ({r['tcrm_images']})",
            r["peak_gib"],
            r["warm_up_s"],
        ],
    )
    table(
        lines,
        rows,
        "microbatch",
        "Update micro-batch (one term: forward with CFG, reference forward, backward)",
        ["micro-batch", "transformer rows", "s per term", "peak GiB"],
        lambda r: [r["micro_batch"], r["transformer_rows"], r["seconds_per_term"], r["peak_gib"]],
    )
    for row in rows:
        if row["kind"] == "microbatch_largest":
            lines += [f"Largest micro-batch that fitted: {row['largest_fitting']} (searched {row['searched']})", ""]
    notes = [r for r in rows if r["kind"] in ("skipped", "error")]
    if notes:
        lines += ["## Skipped or failed", ""]
        lines += [f"- {r['part']} {r['name']}: {r.get('reason') or r['error'] + ': ' + r['message']}" for r in notes]
        lines.append("")
    return "\n".join(lines)


def table(
    lines: list[str],
    rows: list[dict[str, Any]],
    kind: str,
    title: str,
    header: list[str],
    cells: Callable[[dict[str, Any]], list[Any]],
) -> None:
    chosen = [row for row in rows if row["kind"] == kind]
    if not chosen:
        return
    lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in cells(row)) + " |" for row in chosen]
    lines.append("")


def main(argv: list[str] | None = None) -> int:
    import diffusers
    import transformers

    args = parse_args(argv)
    # silence the tokenizers' truncation notices (the tiny pipeline's 16 tokens cut most prompts)
    transformers.logging.set_verbosity_error()
    diffusers.utils.logging.set_verbosity_error()
    recorder = Recorder(Path(args.out), args.budget_s)
    recorder.add(environment(args))
    start = time.perf_counter()
    policy = build_policy(args)
    recorder.add(
        {"kind": "build", "seconds": round(time.perf_counter() - start, 2), "fingerprint": policy.fingerprint()}
    )
    measure = {"train": train_runs, "decode": decode_runs, "microbatch": microbatch_runs}
    for part in PARTS:
        if part in args.parts:
            measure[part](policy, args, recorder)
    recorder.add({"kind": "done", "seconds": round(recorder.elapsed(), 1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
