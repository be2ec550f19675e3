"""`vgpo train CONFIG [section.key=value ...] --out RUN_DIR` and `vgpo train --resume RUN_DIR`.

Under `accelerate launch -m vgpo train ...` every process runs this command; the trainer splits the work and
only the main process writes logs and the report (docs/distributed.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from vgpo.config import TrainConfig, load_config
from vgpo.errors import ConfigError, require_file, require_writable_folder

if TYPE_CHECKING:
    from vgpo.trainer import Trainer


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="fine-tune a flow model with VGPO or Flow-GRPO",
        description="Train from a YAML preset with dotted overrides, e.g. "
        "`vgpo train configs/embedded/compositional_vgpo.yaml algorithm.variant=flow_grpo --out runs/grpo` "
        "(a shipped preset's name works from any folder: `vgpo train embedded/compositional_vgpo ...`; "
        "`vgpo presets` lists them), "
        "or continue a stopped run with `vgpo train --resume runs/grpo`.",
    )
    parser.add_argument(
        "config",
        nargs="?",
        help="YAML file or shipped preset name, e.g. embedded/compositional_vgpo (omit with --resume)",
    )
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    parser.add_argument("--out", help="run directory (default: runs/<preset name>)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from vgpo.trainer import Trainer

    overrides = list(args.overrides)
    if args.resume:
        run_dir = Path(args.resume)
        if args.config is not None:  # `vgpo train --resume RUN a.b=c`: the first positional is an override
            overrides.insert(0, args.config)
        config_path = run_dir / "config.yaml"
        require_file(config_path, f"{run_dir} holds no config.yaml: is it a vgpo run directory?")
        config = load_config(config_path, overrides)
        require_writable_folder(run_dir, "the run folder")
    else:
        if args.config is None:
            raise ConfigError(
                "give a config file or preset name (e.g. embedded/compositional_vgpo; `vgpo presets` lists them) "
                "or --resume RUN_DIR"
            )
        config = load_config(args.config, overrides)
        run_dir = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
        require_writable_folder(run_dir, "--out")  # before the model is built
    if config.run.num_threads is not None:
        torch.set_num_threads(config.run.num_threads)
    trainer = Trainer(config, run_dir)
    try:
        resume = bool(args.resume) and _prepare_resume(trainer, run_dir)
        return _train(trainer, config, run_dir, resume=resume)
    finally:
        trainer.group.close()


def _prepare_resume(trainer: Trainer, run_dir: Path) -> bool:
    """Before ``--resume``: the main process removes the staging folders a kill left behind and, when the run
    stopped before its first checkpoint, its metrics, so that the run starts again from the beginning (said on
    stderr); returns whether there is a checkpoint to resume from."""
    from vgpo import checkpoint

    if trainer.group.is_main:
        has_checkpoint, removed = checkpoint.prepare_resume(run_dir)
        for folder in removed:
            print(f"removed {folder}, a checkpoint cut short when the run was stopped", file=sys.stderr)
        if not has_checkpoint:
            print(
                f"{run_dir} has no checkpoint yet (the run stopped before its first): starting it again from the "
                "beginning with its config.yaml",
                file=sys.stderr,
                flush=True,
            )
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    trainer.group.barrier()  # every process looks after the main one has cleaned up
    return bool(checkpoint.list_checkpoints(run_dir))


def _train(trainer: Trainer, config: TrainConfig, run_dir: Path, *, resume: bool) -> int:
    """Run the trainer; the main process also attaches the loggers, writes the report and prints the summary."""
    from vgpo.experiments.loggers import tensorboard_logger, wandb_logger
    from vgpo.experiments.report import write_report

    if not trainer.group.is_main:  # the other processes train; the main one logs, reports and prints
        trainer.run(resume=resume)
        return 0
    if trainer.group.world_size > 1:
        layout = "sharded over them (FSDP)" if trainer.sharded else "whole on each, gradients summed"
        print(f"{trainer.group.world_size} processes, the trained weights {layout}", flush=True)
    if config.run.tensorboard:
        logger = tensorboard_logger(run_dir / "tensorboard")
        if logger is not None:
            trainer.loggers.append(logger)
    if config.run.wandb_project:
        logger = wandb_logger(config.run.wandb_project, config.to_dict(), run_dir)
        if logger is not None:
            trainer.loggers.append(logger)
    records = trainer.run(resume=resume)
    report = write_report(run_dir)
    evals = [r for r in records if r.get("kind") == "eval"]
    if evals:
        summary = {k: v for k, v in evals[-1].items() if not isinstance(v, dict | list)}
        print(json.dumps(summary, indent=1))
    print(f"run directory: {run_dir}\nreport: {report}")
    return 0
