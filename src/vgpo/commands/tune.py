"""`vgpo tune CONFIG --methods ... --grid key=v1,v2 --out DIR [overrides]`: each method's settings chosen by one
procedure and budget on the train prompts, for `vgpo study --method-settings DIR/settings.json`."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tune",
        help="choose each method's settings from a grid by one procedure and budget (the gym's tuning)",
        description="For every point of --grid, train every method for --iterations on the train prompts (no "
        "evaluation), score each run by its mean training reward over its last --last iterations, and choose per "
        "method the best point. Writes DIR/tuning.md, DIR/tuning.json and DIR/settings.json, which `vgpo study "
        "--method-settings` reads. Resumable: running the same command again skips finished runs.",
    )
    parser.add_argument("config", help="YAML preset every run starts from")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides applied to every run")
    parser.add_argument("--methods", nargs="+", required=True, help="algorithm.method values to tune")
    parser.add_argument(
        "--grid",
        nargs="+",
        required=True,
        metavar="KEY=V1,V2",
        help="settings to search, e.g. optim.learning_rate=1e-4,3e-4,1e-3 (several: every combination)",
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[100], help="tuning seeds (default 100: apart from a study's 0, 1, 2)"
    )
    parser.add_argument("--iterations", type=int, default=6, help="training iterations per run (default 6)")
    parser.add_argument("--last", type=int, default=3, help="last iterations whose reward scores a run (default 3)")
    parser.add_argument("--out", required=True, type=Path, help="tuning folder (re-use it to continue)")
    parser.add_argument("--jobs", type=int, default=2, help="training runs at a time (default 2: one per core)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per job (default 1 if --jobs > 1)")
    parser.add_argument("--choose-only", action="store_true", help="only score the finished runs and choose")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vgpo.experiments.tuning import TuningSpec, check_tuning, choose, parse_grid, run_tuning

    spec = TuningSpec(
        config=args.config,
        overrides=list(args.overrides),
        methods=list(args.methods),
        grid=parse_grid(args.grid),
        seeds=list(args.seeds),
        iterations=args.iterations,
        last=args.last,
    )
    states: dict[str, str] = {}
    if args.choose_only:
        check_tuning(spec)
    else:
        states = run_tuning(args.out, spec, jobs=args.jobs, threads=args.threads)
    record = choose(args.out, spec)
    print((args.out / "tuning.md").read_text())
    print(f"written: {args.out / 'tuning.md'}, {args.out / 'tuning.json'}, {args.out / 'settings.json'}")
    failed = [name for name, state in states.items() if state == "failed"]
    missing = [m for m in spec.methods if m not in record["chosen"]]
    if failed or missing:
        print(f"failed runs: {failed or 'none'}; methods with no finished point: {missing or 'none'}")
        return 1
    return 0
