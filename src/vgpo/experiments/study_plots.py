"""The paper's figures in miniature, from a study's results.json: mean over seeds with a +-1 std band.

curves.png                 test accuracy and reward vs iteration (paper Fig. 3), training reward and the
                           within-group reward std over training (Fig. 1, right)
instant_reward_by_step.png the instant reward of each sampling step's projection (Fig. 1, left)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

PANELS = (  # (section of results.json, metric, panel title, y-axis label)
    ("eval", "accuracy", "test accuracy (the task's evaluation)", "accuracy"),
    ("eval", "score", "test score (the task's reward)", "score"),
    ("train", "reward_mean", "training reward (SDE rollouts)", "mean reward"),
    ("train", "group_reward_std", "reward std within groups", "mean within-group std"),
)


def _band(axis: Any, xs: Sequence[float], mean: Sequence[float], std: Sequence[float], label: str, colour: Any) -> None:
    axis.plot(xs, mean, label=label, color=colour, linewidth=1.6, marker="o", markersize=2.5)  # a lone point shows
    low = [m - s for m, s in zip(mean, std, strict=True)]
    high = [m + s for m, s in zip(mean, std, strict=True)]
    axis.fill_between(xs, low, high, color=colour, alpha=0.18, linewidth=0)


def plot_curves(results: dict[str, Any], path: Path) -> Path | None:
    """Four panels of curves over training iterations, one line per condition; None if nothing to plot."""
    panels = [p for p in PANELS if any(p[1] in c[p[0]] for c in results["conditions"].values())]
    if not panels:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    colours = plt.get_cmap("tab10")
    for axis, (section, key, title, y_label) in zip(axes[0], panels, strict=True):
        for index, (name, cell) in enumerate(results["conditions"].items()):
            curve = cell[section].get(key)
            if curve and curve["iterations"]:
                seeds = max(curve["n"])
                _band(axis, curve["iterations"], curve["mean"], curve["std"], f"{name} ({seeds} seeds)", colours(index))
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("iteration")
        axis.set_ylabel(y_label)
        axis.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=9, frameon=False)
    figure.text(0.995, 0.01, "line: mean over seeds; band: ± 1 sample std", ha="right", va="bottom", fontsize=8)
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_instant_rewards(results: dict[str, Any], path: Path) -> Path | None:
    """Mean instant reward by sampling step (second half of training), one line per condition."""
    # only methods whose credit scores each step's projection log instant rewards by step
    cells = {
        n: c["instant_reward_by_step"] for n, c in results["conditions"].items() if c["instant_reward_by_step"]["mean"]
    }
    if not cells:
        return None
    figure, axis = plt.subplots(figsize=(5.6, 3.8))
    colours = plt.get_cmap("tab10")
    for index, (name, by_step) in enumerate(cells.items()):
        steps = list(range(1, len(by_step["mean"]) + 1))
        _band(axis, steps, by_step["mean"], by_step["std"], name, colours(index))
    axis.set_title("instant reward of each step's one-step projection\n(mean over seeds, band ± 1 std)", fontsize=10)
    axis.set_xlabel("sampling step (1 = first, noisiest)")
    axis.set_ylabel("mean instant reward")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_study(results: dict[str, Any], out: Path) -> list[Path]:
    """Write every figure of a study into ``out``; returns the files written."""
    written = [
        plot_curves(results, out / "curves.png"),
        plot_instant_rewards(results, out / "instant_reward_by_step.png"),
    ]
    return [p for p in written if p is not None]
