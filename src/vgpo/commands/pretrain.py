"""`vgpo pretrain`: train the tiny embedded model from scratch on the procedural tasks (see vgpo.pretrain)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import torch

from vgpo.errors import ConfigError

DEFAULT_TASKS = ("compositional", "text")


def register(subparsers: Any) -> None:
    from vgpo.models.tiny import GLYPH_POSITIONS, TinyConfig
    from vgpo.pretrain import PretrainConfig

    train_defaults, model_defaults = PretrainConfig(), TinyConfig()
    parser = subparsers.add_parser(
        "pretrain",
        help="train the tiny embedded text-to-image flow model on the procedural tasks",
        description="Rectified-flow pretraining of the tiny SD3-shaped model; writes model.safetensors + "
        "config.json (the EMA weights) to --out, every --save-every steps and at the end.",
    )
    parser.add_argument("--out", required=True, help="output folder for model.safetensors and config.json")
    parser.add_argument("--steps", type=int, default=train_defaults.steps, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=train_defaults.batch_size, help="images per step")
    parser.add_argument("--seed", type=int, default=train_defaults.seed, help="seed of init, data and noise")
    parser.add_argument("--lr", type=float, default=train_defaults.lr, help="peak AdamW learning rate")
    parser.add_argument("--warmup-steps", type=int, default=train_defaults.warmup_steps)
    parser.add_argument("--ema-decay", type=float, default=train_defaults.ema_decay)
    parser.add_argument("--cfg-drop", type=float, default=train_defaults.cfg_drop, help="empty-prompt rate")
    parser.add_argument("--sigma-mean", type=float, default=train_defaults.sigma_mean, help="logit-normal mean")
    parser.add_argument("--sigma-std", type=float, default=train_defaults.sigma_std, help="logit-normal scale")
    parser.add_argument(
        "--loss-weighting",
        choices=["velocity", "x0"],
        default=train_defaults.loss_weighting,
        help="velocity: MSE on v (SD3); x0: MSE on the implied clean image (v-error x sigma^2)",
    )
    parser.add_argument("--pool-size", type=int, default=train_defaults.pool_size, help="rendered images kept")
    parser.add_argument("--refresh-per-step", type=int, default=train_defaults.refresh_per_step)
    parser.add_argument("--save-every", type=int, default=train_defaults.save_every)
    parser.add_argument("--log-every", type=int, default=train_defaults.log_every)
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=list(DEFAULT_TASKS),
        help="tasks to draw data from, in equal shares per name given (repeat a name to weight it)",
    )
    parser.add_argument(
        "--init",
        default=None,
        help="continue from this model folder's weights (model.safetensors + config.json; 'shipped' for the "
        "shipped model): its architecture is used, the architecture options must be left at their defaults",
    )
    parser.add_argument("--num-layers", type=int, default=model_defaults.num_layers, help="MMDiT blocks")
    parser.add_argument("--num-attention-heads", type=int, default=model_defaults.num_attention_heads)
    parser.add_argument("--attention-head-dim", type=int, default=model_defaults.attention_head_dim)
    parser.add_argument("--patch-size", type=int, default=model_defaults.patch_size)
    parser.add_argument(
        "--embed-kernel",
        type=int,
        default=model_defaults.embed_kernel,
        help="patch-embedding kernel side, stride = patch size (default 16: overlapping 8 x 8 patches; "
        "pass the patch size for SD3's plain patches)",
    )
    parser.add_argument(
        "--glyph-positions",
        choices=list(GLYPH_POSITIONS),
        default=model_defaults.glyph_positions,
        help="index a glyph token's position from the word's middle (default) or its start",
    )
    parser.add_argument("--shift", type=float, default=model_defaults.shift, help="sigma schedule shift")
    parser.add_argument(
        "--latent-channels",
        type=int,
        default=model_defaults.latent_channels,
        help="run the flow in the latent space of a small autoencoder with this many channels, trained first "
        "(default: pixel space, as the shipped model)",
    )
    parser.add_argument(
        "--latent-downsample", type=int, default=model_defaults.latent_downsample, help="autoencoder reduction"
    )
    parser.add_argument("--autoencoder-width", type=int, default=model_defaults.autoencoder_width)
    parser.add_argument(
        "--autoencoder-steps",
        type=int,
        default=train_defaults.autoencoder_steps,
        help="steps of the autoencoder's training before the flow model's (latent models from scratch)",
    )
    parser.add_argument("--autoencoder-lr", type=float, default=train_defaults.autoencoder_lr)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vgpo.embedded import get_world
    from vgpo.models.tiny import TinyConfig
    from vgpo.pretrain import PretrainConfig, pretrain

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.steps < 1 or args.batch_size < 1 or args.autoencoder_steps < 1:
        raise ConfigError("--steps, --batch-size and --autoencoder-steps must be >= 1")
    init = None
    architecture = dataclasses.replace(
        TinyConfig(),
        num_layers=args.num_layers,
        num_attention_heads=args.num_attention_heads,
        attention_head_dim=args.attention_head_dim,
        patch_size=args.patch_size,
        embed_kernel=args.embed_kernel,
        glyph_positions=args.glyph_positions,
        shift=args.shift,
        latent_channels=args.latent_channels,
        latent_downsample=args.latent_downsample,
        autoencoder_width=args.autoencoder_width,
    )
    model_config = architecture
    if args.init is not None:
        from vgpo.models.tiny import load_model

        init = load_model(None if args.init == "shipped" else args.init)
        if architecture != TinyConfig():
            raise ConfigError(
                "--init takes its architecture from the init model's config.json; drop the architecture options "
                "(--num-layers, --patch-size, ...)"
            )
        model_config = init.config
    config = PretrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=min(args.warmup_steps, args.steps),
        ema_decay=args.ema_decay,
        cfg_drop=args.cfg_drop,
        sigma_mean=args.sigma_mean,
        sigma_std=args.sigma_std,
        loss_weighting=args.loss_weighting,
        pool_size=args.pool_size,
        refresh_per_step=args.refresh_per_step,
        seed=args.seed,
        save_every=args.save_every,
        log_every=args.log_every,
        autoencoder_steps=args.autoencoder_steps,
        autoencoder_lr=args.autoencoder_lr,
    )
    tasks = [get_world(name) for name in args.tasks]
    pretrain(
        args.out,
        model_config,
        config,
        tasks,
        device=args.device,
        init=init,
        init_from=args.init,
        log=lambda line: print(line, flush=True),
    )
    return 0
