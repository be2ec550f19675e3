"""Peak memory of one LoRA training step of the SD3.5-Medium-shaped transformer, measured on the CPU (issue 25,
for sessions without a GPU): resident set size per phase of the update, in a fresh process per micro-batch.

    python bench/sd3_cpu_memory.py --out bench/results/sd3_cpu_memory.json      # full size, micro-batches 1 and 2
    python bench/sd3_cpu_memory.py --small --out /tmp/sd3_cpu_memory.json       # a tiny config (the test runs it)

What one process builds and runs, as `Trainer.update` does (bench/sd3_gpu.py's microbatch part is the GPU twin):
- weights: the published SD3.5-Medium transformer config (`tests/sd3_random.py`'s `SD35_MEDIUM_TRANSFORMER`,
  random weights built in bf16, nothing downloaded) and the SD3.5 VAE, wrapped by `SD3Policy` with LoRA r 32 /
  alpha 64 (float32) on the baseline's 8 attention projections and gradient checkpointing on; the EMA copy of
  the LoRA weights; no text encoder: the prompt embeddings are random tensors of the encoders' output shapes
  (77 CLIP + 256 T5 tokens of width 4096, pooled 2048, and the same for the negative prompt), so T5-XXL's
  4.7 B parameters are not held, as when prompts are encoded once beforehand;
- step 1 (no KL): the SDE step's log-prob of one stored transition under the policy (CFG 4.5: 2 transformer rows
  per sample), the PPO-clipped loss, backward, grad-norm clip, AdamW's first step (which allocates its moments)
  and the EMA update;
- step 2 (KL): the same plus the frozen reference's no-grad forward (the same transformer with LoRA disabled,
  `SD3Policy.reference()`), run between the policy's forward and the backward as the trainer does.

Each phase starts by resetting the process's peak RSS (writing 5 to /proc/self/clear_refs, Linux >= 4.0) and
ends by reading VmHWM (the phase's peak) and VmRSS from /proc/self/status; where the reset is refused the peaks
are cumulative and the row says so. RSS counts what the process holds, glibc's retained free memory included;
the CPU allocator keeps no peak statistics of its own. Tensor sizes (weights, gradients, optimizer state) are
also counted from the tensors themselves. Seconds are recorded too, but they are not a benchmark on a shared CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

GIB = 1024**3

SMALL_TRANSFORMER = {
    "sample_size": 16,
    "patch_size": 2,
    "in_channels": 4,
    "num_layers": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "caption_projection_dim": 16,
    "pooled_projection_dim": 64,
    "out_channels": 4,
    "pos_embed_max_size": 32,
    "dual_attention_layers": (0,),
    "qk_norm": "rms_norm",
}
"""A tiny transformer of the same family (dual attention and qk-norm included), for the test."""

SMALL_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (4,),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 1,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "shift_factor": 0.0609,
    "scaling_factor": 1.5035,
}
"""The tiny test pipeline's VAE (no downsampling)."""

TEXT_TOKENS = 77 + 256
"""CLIP (77) + T5 (256, `model.max_sequence_length`) tokens of SD3's joint text sequence."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write (a .md table is written beside it)")
    parser.add_argument("--small", action="store_true", help="a tiny config instead of SD3.5-Medium's (tests)")
    parser.add_argument("--micro-batches", nargs="+", type=int, default=[1, 2], help="one process per micro-batch")
    parser.add_argument("--resolution", type=int, help="image side in pixels (default 512; 16 with --small)")
    parser.add_argument("--lora-rank", type=int, default=32, help="LoRA rank (alpha = 2 x rank, as the presets)")
    parser.add_argument("--guidance-scale", type=float, default=4.5, help="CFG of the update (> 1: 2 rows a sample)")
    parser.add_argument("--kl-beta", type=float, default=0.04)
    parser.add_argument("--no-checkpointing", action="store_true", help="gradient checkpointing off")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each measuring process")
    parser.add_argument(
        "--min-available-gib",
        type=float,
        help="start a measurement only with this much MemAvailable (default 12 full size, 0 small)",
    )
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="kill a measuring process after this")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one measuring process
    args = parser.parse_args(argv)
    if args.resolution is None:
        args.resolution = 16 if args.small else 512
    if args.min_available_gib is None:
        args.min_available_gib = 0.0 if args.small else 12.0
    return args


# ----------------------------------------------------------------------------------------------------------
# Memory as Linux counts it.


def proc_status() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in bytes."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024  # reported in kB
    return values


def reset_peak() -> bool:
    """Set VmHWM to the current RSS (proc(5): clear_refs "5"); False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def mem_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024 / GIB
    return float("nan")


def gib(size: float) -> float:
    return round(size / GIB, 3)


def tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


# ----------------------------------------------------------------------------------------------------------
# One measuring process: build, then two update steps, one JSON line per phase on stdout as it ends.


@contextmanager
def phase(name: str, extra: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Run a phase with its own peak RSS; prints its row when it ends (``row`` may be filled in the block)."""
    row: dict[str, Any] = {"phase": name, **(extra or {})}
    row["peak_reset"] = reset_peak()
    start = time.perf_counter()
    yield row
    seconds = time.perf_counter() - start
    status = proc_status()
    row.update(peak_rss_gib=gib(status["VmHWM"]), rss_end_gib=gib(status["VmRSS"]), seconds=round(seconds, 2))
    print(json.dumps(row), flush=True)


def build(args: argparse.Namespace) -> Any:
    """The SD3Policy (transformer bf16 with LoRA, VAE bf16), built without text encoders."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    from vgpo.models.sd3 import sd3_policy

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the random pipeline's configs
    from sd3_random import SD35_MEDIUM_TRANSFORMER, SD35_VAE

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built in bf16 directly: no float32 copy of 2.2 B weights
    try:
        transformer: Any = SD3Transformer2DModel(**(SMALL_TRANSFORMER if args.small else SD35_MEDIUM_TRANSFORMER))
        vae: Any = AutoencoderKL(**(SMALL_VAE if args.small else SD35_VAE))
    finally:
        torch.set_default_dtype(previous)
    for module in (transformer, vae):  # the buffers (the 384 x 384 position table) were made in float32
        module.to(torch.bfloat16)
    # the SD3 adapter reads only these of a pipeline; the text encoders are absent (prompts are pre-encoded below)
    pipeline = SimpleNamespace(
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        text_encoder=None,
        text_encoder_2=None,
        text_encoder_3=None,
    )
    return sd3_policy(
        pipeline,
        base_model="random-sd3.5-medium-shaped" if not args.small else "random-small",
        lora_rank=args.lora_rank,
        lora_alpha=2.0 * args.lora_rank,
        gradient_checkpointing=not args.no_checkpointing,
        resolution=args.resolution,
    )


def child(args: argparse.Namespace) -> int:
    import diffusers
    import torch

    from vgpo.math import clipped_policy_loss, gaussian_mean_kl, sde_step
    from vgpo.train_state import EMA

    torch.set_num_threads(args.threads)
    diffusers.utils.logging.set_verbosity_error()  # its notice on casting with .to(): no module asks for float32
    micro_batch = args.micro_batches[0]
    print(json.dumps({"phase": "imports", "rss_gib": gib(proc_status()["VmRSS"])}), flush=True)

    with phase("weights") as row:
        policy = build(args)
        parameters = list(policy.trainable_parameters())
        optimizer = torch.optim.AdamW(parameters, lr=3e-4, weight_decay=1e-4)
        ema = EMA(parameters, 0.9)
        config = policy.denoiser.config
        width, pooled = int(config.joint_attention_dim), int(config.pooled_projection_dim)
        tokens = 8 if args.small else TEXT_TOKENS
        cond = {  # [m, L, D] / [m, P], the dtype encode_prompts returns
            key: torch.randn(shape, dtype=policy.adapter.dtype)
            for key, shape in (
                ("prompt_embeds", (micro_batch, tokens, width)),
                ("negative_prompt_embeds", (micro_batch, tokens, width)),
                ("pooled", (micro_batch, pooled)),
                ("negative_pooled", (micro_batch, pooled)),
            )
        }
        latents = torch.randn((micro_batch, *policy.latent_shape))  # x_t [m, C, H, W] float32, as stored
        next_latents = latents + 0.01 * torch.randn_like(latents)
        sigmas = policy.sigma_schedule(10)
        sigma, sigma_next = sigmas[5].expand(micro_batch), sigmas[6].expand(micro_batch)  # a middle step of T = 10
        advantages = torch.randn(micro_batch)
        base = [p for p in policy.denoiser.parameters() if not p.requires_grad]
        _, height, width_latent = policy.latent_shape
        patch = int(config.patch_size)
        row.update(
            transformer_params=sum(p.numel() for p in policy.denoiser.parameters()),
            transformer_base_gib=gib(tensor_bytes(base)),
            transformer_buffers_gib=gib(tensor_bytes(policy.denoiser.buffers())),
            lora_params=sum(p.numel() for p in parameters),
            lora_gib=gib(tensor_bytes(parameters)),
            vae_gib=gib(tensor_bytes(policy.adapter.vae.parameters())),
            ema_gib=gib(tensor_bytes(ema.shadow)),
            inputs_gib=gib(tensor_bytes([*cond.values(), latents, next_latents])),
            image_tokens=(height // patch) * (width_latent // patch),
            text_tokens=tokens,
            transformer_rows=2 * micro_batch if args.guidance_scale > 1 else micro_batch,
        )

    def step(index: int, kl: bool) -> None:
        with phase(f"step{index}.forward"):
            velocity = policy.velocity(latents, sigma, cond, args.guidance_scale)
            result = sde_step(latents, velocity, sigma, sigma_next, 0.7, prev_sample=next_latents)
            loss, _ = clipped_policy_loss(result.log_prob, result.log_prob.detach(), advantages, 1e-4)
        if kl:
            with phase(f"step{index}.reference_forward"), torch.no_grad(), policy.reference():
                reference_velocity = policy.velocity(latents, sigma, cond, args.guidance_scale)
                reference = sde_step(latents, reference_velocity, sigma, sigma_next, 0.7, prev_sample=next_latents)
            loss = loss + args.kl_beta * gaussian_mean_kl(result.mean, reference.mean, result.std).mean()
        with phase(f"step{index}.backward") as row:
            loss.backward()
            row["grads_gib"] = gib(tensor_bytes(p.grad for p in parameters))
        with phase(f"step{index}.optimizer") as row:
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            ema.update()
            optimizer.zero_grad(set_to_none=True)
            row["optimizer_state_gib"] = gib(
                tensor_bytes(v for state in optimizer.state.values() for v in state.values() if v.dim() > 0)
            )

    step(1, kl=False)
    step(2, kl=True)
    return 0


# ----------------------------------------------------------------------------------------------------------
# The driver: one fresh process per micro-batch, results as JSON and a markdown table.


def environment(args: argparse.Namespace) -> dict[str, Any]:
    import diffusers
    import peft
    import torch

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "peft": peft.__version__,
        "malloc_env": {key: value for key, value in os.environ.items() if key.startswith("MALLOC_")},
        "size": "small" if args.small else "sd3.5-medium",
        "resolution": args.resolution,
        "lora_rank": args.lora_rank,
        "lora_alpha": 2 * args.lora_rank,
        "guidance_scale": args.guidance_scale,
        "kl_beta": args.kl_beta,
        "gradient_checkpointing": not args.no_checkpointing,
    }


def measure(args: argparse.Namespace, micro_batch: int) -> dict[str, Any]:
    """Run one measuring process; its phases as far as it got, and why it stopped if it failed."""
    available = mem_available_gib()
    result: dict[str, Any] = {"micro_batch": micro_batch, "mem_available_before_gib": round(available, 1)}
    if available < args.min_available_gib:
        return {**result, "skipped": f"MemAvailable {available:.1f} GiB < --min-available-gib {args.min_available_gib}"}
    command = [sys.executable, __file__, "--child", "--micro-batches", str(micro_batch)]
    command += ["--resolution", str(args.resolution), "--lora-rank", str(args.lora_rank)]
    command += ["--guidance-scale", str(args.guidance_scale), "--kl-beta", str(args.kl_beta)]
    command += ["--threads", str(args.threads), "--out", args.out]
    command += ["--small"] * args.small + ["--no-checkpointing"] * args.no_checkpointing
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    # the phases go to a file as they end (tail it to follow a long run); read back whatever the process finished
    log = Path(args.out).with_suffix(f".micro_batch_{micro_batch}.log")
    with log.open("w") as stream:
        try:
            done = subprocess.run(
                command, env=env, stdout=stream, stderr=subprocess.PIPE, text=True, timeout=args.timeout_s
            )
            returncode, stderr = done.returncode, done.stderr
        except subprocess.TimeoutExpired:
            returncode, stderr = None, f"timed out after {args.timeout_s:.0f} s"
    stdout = log.read_text()
    log.unlink()
    rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    result["phases"] = rows
    result["returncode"] = returncode
    if returncode != 0:
        result["error"] = stderr[-2000:]
    steps = [row for row in rows if row["phase"].startswith("step")]
    if steps:
        result["step_peak_rss_gib"] = max(row["peak_rss_gib"] for row in steps)
    return result


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        "# Peak RSS of one LoRA update step on the CPU (bench/sd3_cpu_memory.py)",
        "",
        f"`{env['command']}`: {env['size']}, {env['resolution']} px, LoRA r {env['lora_rank']}, CFG "
        f"{env['guidance_scale']}, gradient checkpointing {env['gradient_checkpointing']}; {env['cpu']}, "
        f"{env['threads']} torch thread(s), torch {env['torch']}, diffusers {env['diffusers']}, peft {env['peft']}.",
        f"glibc malloc settings: {env['malloc_env'] or 'defaults'}. Seconds are on a shared CPU, not a benchmark.",
        "",
        "| micro-batch | phase | peak RSS GiB | RSS at end GiB | seconds | counted |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    counted = (
        "transformer_base_gib",
        "transformer_buffers_gib",
        "lora_gib",
        "vae_gib",
        "ema_gib",
        "inputs_gib",
        "grads_gib",
    )
    for result in report["results"]:
        if "skipped" in result:
            lines.append(f"| {result['micro_batch']} | skipped: {result['skipped']} | | | | |")
            continue
        for row in result["phases"]:
            if row["phase"] == "imports":
                continue
            notes = [f"{key[:-4]} {row[key]}" for key in (*counted, "optimizer_state_gib") if key in row]
            reset = "" if row["peak_reset"] else " (cumulative)"
            lines.append(
                f"| {result['micro_batch']} | {row['phase']} | {row['peak_rss_gib']}{reset} | {row['rss_end_gib']} "
                f"| {row['seconds']} | {', '.join(notes)} |"
            )
        if result.get("error"):
            lines.append(f"| {result['micro_batch']} | failed: {result['error'].splitlines()[-1][:200]} | | | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"environment": environment(args), "results": []}
    for micro_batch in args.micro_batches:
        report["results"].append(measure(args, micro_batch))
        out.write_text(json.dumps(report, indent=1) + "\n")  # after each process, so a kill keeps what ended
        out.with_suffix(".md").write_text(markdown(report))
        print(json.dumps(report["results"][-1]), flush=True)
    failed = [r for r in report["results"] if r.get("returncode") != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
