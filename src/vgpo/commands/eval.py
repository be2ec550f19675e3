"""`vgpo eval [RUN_DIR | CHECKPOINT_DIR] [section.key=value ...]`: test accuracy, quality and diversity."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vgpo.config import TrainConfig, config_from_dict, load_config, merge_dicts, parse_overrides
from vgpo.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a base model or a trained checkpoint on the test prompts",
        description="Evaluate the newest checkpoint of a run (EMA weights when present), a checkpoint folder, "
        "or with --config alone the base model. Prints JSON; --out also writes it with a sample grid.",
    )
    parser.add_argument("target", nargs="?", help="run directory or checkpoint folder (omit for the base model)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides (e.g. sampling.eval_max_prompts=20)")
    parser.add_argument("--config", help="YAML preset (default: the run's own config)")
    parser.add_argument("--out", help="folder for metrics.json and samples.png")
    parser.add_argument("--no-ema", action="store_true", help="evaluate the raw weights instead of the EMA")
    parser.add_argument(
        "--quality",
        help="comma-separated rewards of the quality suite (e.g. aesthetic,deqa,imagereward,pickscore,unifiedreward)"
        ": score the run and its base model on --prompts and print a table base vs run (docs/rewards.md)",
    )
    parser.add_argument("--prompts", type=Path, help="with --quality: prompt file (.txt one per line, or a CSV)")
    parser.set_defaults(func=run)


def _resolve(target: str | None) -> tuple[Path | None, Path | None]:
    """(checkpoint folder, run dir) for a target path."""
    from vgpo.checkpoint import list_checkpoints

    if target is None:
        return None, None
    path = Path(target)
    if (path / "checkpoint.json").is_file():
        return path, path.parent.parent
    if (path / "config.yaml").is_file():
        found = list_checkpoints(path)
        if not found:
            raise ConfigError(f"run {path} has no checkpoint yet")
        return found[-1], path
    raise ConfigError(f"{target} is neither a run directory (config.yaml) nor a checkpoint folder (checkpoint.json)")


def run(args: argparse.Namespace) -> int:
    from vgpo.builders import build_evaluation, build_policy, build_task
    from vgpo.checkpoint import load_weights, read_meta

    if args.target is not None and "=" in args.target and not Path(args.target).exists():
        args.overrides.insert(0, args.target)  # `vgpo eval --config C a.b=c`: no target, only overrides
        args.target = None
    checkpoint, _ = _resolve(args.target)
    if args.quality or args.prompts:
        return _run_quality(args, checkpoint)
    config: TrainConfig
    if args.config:
        config = load_config(args.config, args.overrides)
    elif checkpoint is not None:
        data = read_meta(checkpoint)["config"]
        config = config_from_dict(merge_dicts(data, parse_overrides(args.overrides)))
    else:
        config = load_config(None, args.overrides)
    policy = build_policy(config.model)
    if checkpoint is not None:
        load_weights(policy, checkpoint, use_ema=not args.no_ema)
    evaluation = build_evaluation(config, build_task(config.task))  # the trainer's own set-up
    out = Path(args.out) if args.out else None
    metrics = evaluation.run(policy, out / "samples.png" if out else None)
    metrics = {"checkpoint": str(checkpoint) if checkpoint else "base model", **metrics}
    text = json.dumps(metrics, indent=1)
    print(text)
    if out:
        (out / "metrics.json").write_text(text + "\n")
    return 0


def _run_quality(args: argparse.Namespace, checkpoint: Path | None) -> int:
    """``--quality``: the quality suite on the user's prompts, base model vs the run (vgpo.experiments.quality_comparison)."""
    from vgpo.builders import build_policy
    from vgpo.checkpoint import load_weights, read_meta
    from vgpo.evaluation import evaluation_seed
    from vgpo.experiments.quality_comparison import (
        compare,
        format_table,
        parse_quality_names,
        read_prompts,
        write_outputs,
    )
    from vgpo.sampling import generate

    if not args.quality or args.prompts is None:
        raise ConfigError("--quality and --prompts go together, e.g. --prompts drawbench.txt --quality aesthetic")
    if checkpoint is None:
        raise ConfigError("--quality compares a run with its base model; give the run directory or checkpoint")
    folder: Path = checkpoint
    if args.config:
        raise ConfigError("--quality evaluates with the run's own config; drop --config (overrides still apply)")
    names = parse_quality_names(args.quality)
    prompts = read_prompts(args.prompts)
    data = read_meta(checkpoint)["config"]
    config = config_from_dict(merge_dicts(data, parse_overrides(args.overrides)))
    policy = build_policy(config.model)
    s = config.sampling
    seed = evaluation_seed(config.run.seed)  # the seed evaluation samples with, the same for base and run

    def sample() -> Any:
        return generate(policy, prompts, num_steps=s.eval_num_steps, seed=seed, guidance_scale=s.guidance_scale)

    def sample_run() -> Any:
        load_weights(policy, folder, use_ema=not args.no_ema)
        return sample()

    options = dict(config.task.reward_options or {})
    record = compare(sample, sample_run, prompts, names, options)
    record = {"checkpoint": str(checkpoint), "prompts": str(args.prompts), "num_steps": s.eval_num_steps,
              "seed": seed, **record}  # fmt: skip
    table = format_table(record, checkpoint.name)
    print(f"quality suite: {len(prompts)} prompts from {args.prompts}, {s.eval_num_steps} ODE steps, seed {seed}")
    print(table)
    if args.out:
        write_outputs(record, table, Path(args.out))
    return 0
