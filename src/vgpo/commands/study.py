"""`vgpo study CONFIG --methods ... --seeds ... [--kl ...] --out DIR [overrides]`: methods x KL x seeds, resumable,
compared by their gain against iterations, wall-clock seconds and model evaluations (the method gym)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "study",
        help="run methods x seeds of a preset as a resumable job list, compare them at equal compute",
        description="Run every (method, KL beta, seed) of a preset as a `vgpo train` job, --jobs at a time, then "
        "write results.json (mean and std over seeds), curves.png, instant_reward_by_step.png, gain_by_compute.png "
        "(gain by iteration, training seconds and model evaluations) and tables.md (with the compute each method "
        "needed to reach Flow-GRPO's final gain). "
        "Running the same command again continues a stopped study: finished jobs are skipped, interrupted ones "
        "resume from their last checkpoint.",
    )
    parser.add_argument("config", help="YAML preset every job starts from")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides applied to every job")
    parser.add_argument(
        "--methods",
        "--variants",
        dest="variants",
        nargs="+",
        default=["flow_grpo", "vgpo"],
        help="algorithm.method values (--variants: the older name)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="run.seed values")
    parser.add_argument(
        "--method-settings",
        type=Path,
        default=None,
        help="a JSON file {method: [section.key=value, ...]}: overrides for that method's jobs only, applied last "
        "(e.g. the settings.json that `vgpo tune` writes); methods it does not name run at the study's settings",
    )
    parser.add_argument(
        "--kl", nargs="+", type=float, default=None, help="algorithm.kl_beta values (default: the preset's)"
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="study folder (re-use it to continue, or to grow it by more variants, KL values or seeds)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="training runs at a time (default 2: one per core)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per job (default 1 if --jobs > 1)")
    parser.add_argument(
        "--metric",
        default=None,
        help="the gym's headline metric (default: accuracy, else score, else reward; e.g. score where the strict "
        "accuracy moves in coarse steps)",
    )
    parser.add_argument(
        "--no-share-base-eval",
        dest="share_base_eval",
        action="store_false",
        help="evaluate the base model in every job (default: once per seed, reused by the methods whose settings "
        "cannot change it; the summary marks the reused rows shared_from)",
    )
    parser.add_argument(
        "--summarize-only",
        action="store_true",
        help="only (re)write results and plots; may name fewer variants, KL values or seeds than the study ran",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vgpo.config import load_config
    from vgpo.errors import ConfigError
    from vgpo.experiments.study import (
        StudySpec,
        prepare,
        read_method_settings,
        run_study,
        study_tables,
        summarize,
    )
    from vgpo.experiments.study_plots import plot_study

    kl = args.kl if args.kl is not None else [load_config(args.config, args.overrides).algorithm.kl_beta]
    spec = StudySpec(
        config=args.config,
        overrides=list(args.overrides),
        variants=args.variants,
        kl_betas=kl,
        seeds=args.seeds,
        method_overrides=read_method_settings(args.method_settings, args.variants),
    )
    states: dict[str, str] = {}
    if args.summarize_only:
        if not (args.out / "study.json").is_file():
            raise ConfigError(f"{args.out} holds no study (no study.json) to summarise")
        prepare(args.out, spec, subset=True)
    else:
        states = run_study(args.out, spec, jobs=args.jobs, threads=args.threads, share_base_eval=args.share_base_eval)
    results = summarize(args.out, spec, args.metric)
    tables = study_tables(results)
    (args.out / "tables.md").write_text(tables)
    figures = plot_study(results, args.out)
    print(tables)
    print("written: " + ", ".join(str(p) for p in [args.out / "results.json", args.out / "tables.md", *figures]))
    failed = [name for name, state in states.items() if state == "failed"]
    if failed:
        print(f"failed jobs (see {args.out / 'logs'}): {', '.join(failed)}; run the same command again to retry")
        return 1
    return 0
