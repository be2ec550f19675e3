"""Print the evaluation lines of training runs (their ``metrics.jsonl``), one row per evaluation.

    python bench/summarize_runs.py runs/demo runs/flow_grpo

Per run: the number of training iterations, the mean ``zero_spread_fraction`` (share of groups whose rewards
were all equal, where plain GRPO has no signal) and the median seconds of each phase of an iteration; then for
every evaluation its iteration, strict accuracy (per sub-category), graded score, reward and the quality metrics;
with ``--train-every N``, also every N-th iteration's rollout reward, zero-spread fraction and mean |advantage|.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

KEYS = (
    "accuracy",
    "accuracy/single_object",
    "accuracy/two_object",
    "accuracy/counting",
    "accuracy/colors",
    "accuracy/position",
    "accuracy/color_attr",
    "accuracy/len2",
    "accuracy/len3",
    "accuracy/len4",
    "score",
    "reward",
    "quality/sharpness",
    "quality/noise",
    "quality/clipped",
    "quality/blockiness",
    "diversity",
)


def summarize(run: Path, train_every: int = 0) -> list[str]:
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        return [f"{run}: no metrics.jsonl (not a run folder, or its first evaluation has not finished yet)"]
    lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train = [line for line in lines if line.get("kind") == "train"]
    spread = [line["zero_spread_fraction"] for line in train if "zero_spread_fraction" in line]
    mean_spread = sum(spread) / len(spread) if spread else float("nan")
    phases = sorted({phase for line in train for phase in line.get("seconds", {})})
    medians = " ".join(
        f"{phase} {statistics.median(line['seconds'][phase] for line in train if phase in line.get('seconds', {})):.2f}s"
        for phase in phases
    )
    rows = [f"{run}: {len(train)} iterations, mean zero_spread_fraction {mean_spread:.3f}; median {medians}"]
    for line in train[::train_every] if train_every else []:
        rows.append(
            f"  train it {line['iteration']:>4} reward_mean={line['reward_mean']:.3f} "
            f"zero_spread={line['zero_spread_fraction']:.3f} advantage_abs_mean={line['advantage_abs_mean']:.3f}"
        )
    for line in lines:
        if line.get("kind") == "eval":
            values = " ".join(f"{key.split('/')[-1]}={line[key]:.3f}" for key in KEYS if key in line)
            rows.append(f"  it {line['iteration']:>4} {values}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (each holding metrics.jsonl)")
    parser.add_argument("--train-every", type=int, default=0, help="also print every N-th training iteration")
    args = parser.parse_args()
    for run in args.runs:
        print("\n".join(summarize(run, args.train_every)))


if __name__ == "__main__":
    main()
