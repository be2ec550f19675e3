"""The paper's figures in miniature, from a study's results.json: mean over seeds with a +-1 std band.

curves.png                 test accuracy and reward vs iteration (paper Fig. 3), training reward and the
                           within-group reward std over training (Fig. 1, right)
instant_reward_by_step.png the instant reward of each sampling step's projection (Fig. 1, left)
gain_by_compute.png        the method gym: the headline metric's gain over the base model by iteration, by training
                           seconds and by model evaluations, with the baseline's (Flow-GRPO's) final gain dashed
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, MaxNLocator

PANELS = (  # (section of results.json, metric, panel title, y-axis label)
    ("eval", "accuracy", "test accuracy (the task's evaluation)", "accuracy"),
    ("eval", "score", "test score (the task's reward)", "score"),
    ("train", "reward_mean", "training reward (each method's rollouts)", "mean reward"),
    ("train", "group_reward_std", "reward std within groups", "mean within-group std"),
)


LINE_STYLES = ("-", "--", ":")
"""Conditions 1-10 solid, 11-20 dashed, then dotted: tab10 has ten colours, a gym may hold fifteen methods."""


def _style(index: int, count: int) -> dict[str, Any]:
    """Colour, line style and band opacity of the ``index``-th of ``count`` conditions: no two lines alike, and
    fainter bands when many overlap."""
    return {
        "colour": plt.get_cmap("tab10")(index % 10),
        "linestyle": LINE_STYLES[min(index // 10, len(LINE_STYLES) - 1)],
        "alpha": 0.18 if count <= 5 else 0.07,
    }


def _band(
    axis: Any,
    xs: Sequence[float],
    mean: Sequence[float],
    std: Sequence[float],
    label: str,
    colour: Any,
    linestyle: str = "-",
    alpha: float = 0.18,
) -> None:
    axis.plot(xs, mean, label=label, color=colour, linestyle=linestyle, linewidth=1.6, marker="o", markersize=2.5)
    low = [m - s for m, s in zip(mean, std, strict=True)]
    high = [m + s for m, s in zip(mean, std, strict=True)]
    axis.fill_between(xs, low, high, color=colour, alpha=alpha, linewidth=0)


def plot_curves(results: dict[str, Any], path: Path) -> Path | None:
    """Four panels of curves over training iterations, one line per condition; None if nothing to plot."""
    panels = [p for p in PANELS if any(p[1] in c[p[0]] for c in results["conditions"].values())]
    if not panels:
        return None
    rows = -(-len(results["conditions"]) // 4)  # legend rows below the panels, 0.22 inch each
    height = 3.2 + 0.22 * rows
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), height), squeeze=False)
    count = len(results["conditions"])
    evaluated = results.get("evaluated_on", "test")
    for axis, (section, key, title, y_label) in zip(axes[0], panels, strict=True):
        for index, (name, cell) in enumerate(results["conditions"].items()):
            curve = cell[section].get(key)
            if curve and curve["iterations"]:
                seeds = max(curve["n"])
                label = f"{name} ({seeds} seeds)"
                _band(axis, curve["iterations"], curve["mean"], curve["std"], label, **_style(index, count))
        axis.set_title(title.replace("test ", f"{evaluated} ", 1), fontsize=10)
        axis.set_xlabel("iteration")
        axis.set_ylabel(y_label)
        axis.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=9, frameon=False)
    figure.text(0.995, 0.01, "line: mean over seeds; band: ± 1 sample std", ha="right", va="bottom", fontsize=8)
    figure.tight_layout(rect=(0, (0.3 + 0.22 * rows) / height, 1, 1))
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
    for index, (name, by_step) in enumerate(cells.items()):
        steps = list(range(1, len(by_step["mean"]) + 1))
        _band(axis, steps, by_step["mean"], by_step["std"], name, **_style(index, len(cells)))
    axis.set_title("instant reward of each step's one-step projection\n(mean over seeds, band ± 1 std)", fontsize=10)
    axis.set_xlabel("sampling step (1 = first, noisiest)")
    axis.set_ylabel("mean instant reward")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


GYM_AXES = (  # (key of the compute curve or None for iterations, x-axis label, panel title)
    (None, "training iteration", "by iteration"),
    ("seconds", "training wall-clock seconds (cumulative; evaluation excluded)", "by wall-clock time"),
    ("model_evaluations", "model evaluations (cumulative; one per sample per velocity call)", "by model evaluations"),
)


def plot_gain_by_compute(results: dict[str, Any], path: Path) -> Path | None:
    """Three panels, the headline metric's gain against iteration, seconds and model evaluations, one line per
    condition (x: the mean over seeds of the compute spent by that evaluation; band: ± 1 std of the gain)."""
    gym = results.get("gym", {})
    metric = gym.get("metric")
    cells = {
        name: cell["compute"]["curve"]
        for name, cell in results["conditions"].items()
        if metric is not None and cell.get("compute", {}).get("curve", {}).get("iterations")
    }
    if not cells:
        return None
    figure, axes = plt.subplots(1, len(GYM_AXES), figsize=(15.0, 4.4), squeeze=False)
    evaluated = results.get("evaluated_on", "test")
    targets = {value for value in gym.get("targets", {}).values() if value is not None}
    for axis, (key, x_label, title) in zip(axes[0], GYM_AXES, strict=True):
        for index, (name, curve) in enumerate(cells.items()):
            xs = curve["iterations"] if key is None else curve[key]["mean"]
            seeds = max(curve["gain"]["n"]) if curve["gain"]["n"] else 0
            label = f"{name} ({seeds} seed{'s' if seeds != 1 else ''})"
            _band(axis, xs, curve["gain"]["mean"], curve["gain"]["std"], label, **_style(index, len(cells)))
        for target in sorted(targets):
            axis.axhline(target, color="black", linestyle="--", linewidth=1.0, alpha=0.7)
        axis.set_title(f"gain in {evaluated} {metric}, {title}", fontsize=10)
        axis.set_xlabel(x_label, fontsize=9)
        axis.set_ylabel(f"{metric} minus the base model's", fontsize=9)
        axis.grid(alpha=0.3)
        if key is None:
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        if key == "model_evaluations":  # "12k", not an offset text that collides with the axis label
            axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value / 1000:g}k" if value else "0"))
    handles, labels = axes[0][0].get_legend_handles_labels()
    if targets:
        handles.append(plt.Line2D([], [], color="black", linestyle="--", linewidth=1.0))
        labels.append(f"{gym.get('baseline')}'s final mean gain (the target)")
    figure.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=9, frameon=False)
    figure.text(0.995, 0.01, "line: mean over seeds; band: ± 1 sample std", ha="right", va="bottom", fontsize=8)
    rows = -(-len(labels) // 4)
    figure.tight_layout(rect=(0, 0.06 + 0.05 * rows, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_study(results: dict[str, Any], out: Path) -> list[Path]:
    """Write every figure of a study into ``out``; returns the files written."""
    written = [
        plot_curves(results, out / "curves.png"),
        plot_instant_rewards(results, out / "instant_reward_by_step.png"),
        plot_gain_by_compute(results, out / "gain_by_compute.png"),
    ]
    return [p for p in written if p is not None]
