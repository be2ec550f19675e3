"""`vgpo sample`: images and a grid PNG for given prompts, from the base model or a checkpoint, seeded."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import torch

from vgpo.errors import CheckpointError, ConfigError, require_file


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sample",
        help="generate images for prompts (ODE or SDE sampler) and write PNGs plus a grid",
        description="Writes <out>/<prompt index>_<sample index>_<slug>.png for every image and <out>/grid.png "
        "(one row per prompt). The same arguments give the same images.",
    )
    parser.add_argument("--prompts", nargs="*", default=[], help="prompts to draw")
    parser.add_argument("--prompt-file", help="file of prompts: one a line, or JSONL records with a 'prompt' field")
    parser.add_argument(
        "--checkpoint",
        help="model folder (model.safetensors + config.json) or training checkpoint folder "
        "(trainable.safetensors + checkpoint.json); default: the tiny model shipped with vgpo",
    )
    parser.add_argument("--steps", type=int, default=40, help="sampling steps")
    parser.add_argument("--sde", action="store_true", help="use the Flow-GRPO SDE sampler instead of the ODE")
    parser.add_argument("--noise-level", type=float, default=0.7, help="SDE noise level a (with --sde)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise (and SDE noise)")
    parser.add_argument("--num-per-prompt", type=int, default=4, help="images per prompt")
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance scale")
    parser.add_argument("--batch-size", type=int, default=64, help="images per model call")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--out", required=True, help="output folder")
    parser.set_defaults(func=run)


def read_prompt_file(path: Path) -> list[str]:
    """Prompts from a text file (one a line) or a JSONL file of {"prompt": ...} records."""
    require_file(path, f"prompt file {path} does not exist")
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                prompts.append(str(json.loads(line)["prompt"]))
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ConfigError(f"{path}:{number}: not a JSON record with a 'prompt' field ({error})") from error
        else:
            prompts.append(line.strip())
    return prompts


def load_policy(checkpoint: str | None, device: str) -> Any:
    """The tiny policy from a model folder, a training checkpoint folder, or the shipped model (None)."""
    from vgpo.models.tiny import load_tiny_policy

    if checkpoint is None:
        return load_tiny_policy(device=device)
    folder = Path(checkpoint)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    if (folder / "checkpoint.json").is_file():
        return _load_training_checkpoint(folder, device)
    return load_tiny_policy(folder, device=device)


def _load_training_checkpoint(folder: Path, device: str) -> Any:
    """A training checkpoint: the model its checkpoint.json names plus its trainable weights (EMA when saved)."""
    from vgpo.builders import build_policy
    from vgpo.checkpoint import load_weights, read_meta
    from vgpo.config import ModelConfig

    meta = read_meta(folder)
    try:
        model_config = ModelConfig(**{**meta["model"], "device": device})
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"{folder / 'checkpoint.json'} has no usable 'model' settings ({error})") from error
    policy = build_policy(model_config)
    load_weights(policy, folder, use_ema=True)
    return policy


def _slug(prompt: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "-", prompt).strip("-")[:40] or "empty"


def save_png(image: torch.Tensor, path: Path) -> None:
    """Write one image [3, H, W] in [0, 1] as PNG."""
    from PIL import Image

    from vgpo.scoring.images import images_to_uint8

    array = images_to_uint8(image[None])[0]  # [H, W, 3]
    Image.fromarray(array).save(path)


def make_grid(images: torch.Tensor, columns: int, pad: int = 2) -> torch.Tensor:
    """Tile images [N, 3, H, W] into rows of ``columns`` with a white ``pad``: [3, H', W']."""
    n, channels, height, width = images.shape
    rows = -(-n // columns)
    grid = torch.ones(channels, rows * (height + pad) + pad, columns * (width + pad) + pad)
    for index in range(n):
        row, col = divmod(index, columns)
        top, left = pad + row * (height + pad), pad + col * (width + pad)
        grid[:, top : top + height, left : left + width] = images[index]
    return grid


def run(args: argparse.Namespace) -> int:
    from vgpo.sampling import generate

    prompts = list(args.prompts)
    if args.prompt_file:
        prompts += read_prompt_file(Path(args.prompt_file))
    if not prompts:
        raise ConfigError("no prompts: pass --prompts TEXT ... and/or --prompt-file FILE")
    if args.num_per_prompt < 1 or args.steps < 1:
        raise ConfigError("--num-per-prompt and --steps must be >= 1")
    policy = load_policy(args.checkpoint, args.device)
    expanded = [prompt for prompt in prompts for _ in range(args.num_per_prompt)]  # [B * G], prompt-major
    with torch.no_grad():
        images = generate(
            policy,
            expanded,
            num_steps=args.steps,
            seed=args.seed,
            sde=args.sde,
            noise_level=args.noise_level,
            guidance_scale=args.guidance_scale,
            batch_size=args.batch_size,
        ).cpu()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if images.dim() == 5:  # videos [N, F, 3, H, W] (e.g. Wan): one GIF each, prompt-major
        from vgpo.evaluation import save_gifs

        save_gifs(images, out)
        (out / "prompts.json").write_text(json.dumps(prompts, indent=2) + "\n")
        print(f"wrote {len(images)} videos (sample_NNN.gif, {args.num_per_prompt} per prompt) to {out}")
        return 0
    for index, image in enumerate(images):
        prompt_index, sample_index = divmod(index, args.num_per_prompt)
        save_png(image, out / f"{prompt_index:03d}_{sample_index:02d}_{_slug(prompts[prompt_index])}.png")
    save_png(make_grid(images, args.num_per_prompt), out / "grid.png")
    (out / "prompts.json").write_text(json.dumps(prompts, indent=2) + "\n")
    print(f"wrote {len(images)} images and grid.png to {out}")
    return 0
