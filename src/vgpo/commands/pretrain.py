"""`vgpo pretrain [section.key=value ...] --out DIR`: train the tiny embedded model from scratch on the procedural
tasks (see vgpo.models.tiny_pretraining).

Settings are ``section.key=value`` overrides as in `vgpo train`, over three typed sections (vgpo.models.tiny_pretraining):
``train`` (steps, batch_size, lr, loss_weighting, ...: PretrainConfig), ``model`` (the architecture: TinyConfig)
and ``run`` (device, threads, tasks, init); ``--config FILE`` reads a YAML file of them first. For example
`vgpo pretrain train.steps=1000 model.latent_channels=4 run.tasks=[compositional] --out my_model`.
The older flags still work and map to the same keys (``--steps 1000`` is ``train.steps=1000``,
``--latent-channels 4`` is ``model.latent_channels=4``, ``--threads 1`` is ``run.threads=1``).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any


def _legacy_flags() -> dict[str, str]:
    """``--flag-name`` -> ``section.field`` for every field of the three sections (the pre-overrides options)."""
    from vgpo.models.tiny_pretraining import PretrainCommandConfig

    flags: dict[str, str] = {}
    defaults = PretrainCommandConfig()
    for section in dataclasses.fields(defaults):
        for item in dataclasses.fields(getattr(defaults, section.name)):
            flags["--" + item.name.replace("_", "-")] = f"{section.name}.{item.name}"
    return flags


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="train the tiny embedded text-to-image flow model on the procedural tasks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides (sections train, model, run)")
    parser.add_argument("--out", required=True, help="output folder for model.safetensors and config.json")
    parser.add_argument("--config", help="YAML file with train / model / run sections (read before the overrides)")
    legacy = parser.add_argument_group("older flags (hidden; each is the override of the same name)")
    for flag, key in _legacy_flags().items():
        nargs = "+" if key == "run.tasks" else None
        legacy.add_argument(flag, dest=f"legacy:{key}", nargs=nargs, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def legacy_overrides(args: argparse.Namespace) -> list[str]:
    """The older flags given, as overrides (values parsed as YAML scalars, like any override)."""
    overrides = []
    for name, value in vars(args).items():
        if name.startswith("legacy:"):
            key = name.removeprefix("legacy:")
            text = "[" + ", ".join(value) + "]" if isinstance(value, list) else value
            overrides.append(f"{key}={text}")
    return overrides


def run(args: argparse.Namespace) -> int:
    import torch

    from vgpo.embedded import get_world
    from vgpo.models.tiny_pretraining import load_pretrain_config, pretrain

    config = load_pretrain_config(args.config, [*legacy_overrides(args), *args.overrides])
    if config.run.threads is not None:
        torch.set_num_threads(config.run.threads)
    init = None
    model_config = config.model
    if config.run.init is not None:
        from vgpo.models.tiny import load_model

        init = load_model(None if config.run.init == "shipped" else config.run.init)
        model_config = init.config
    train = dataclasses.replace(config.train, warmup_steps=min(config.train.warmup_steps, config.train.steps))
    tasks = [get_world(name) for name in config.run.tasks]
    pretrain(
        args.out,
        model_config,
        train,
        tasks,
        device=config.run.device,
        init=init,
        init_from=config.run.init,
        log=lambda line: print(line, flush=True),
    )
    return 0
