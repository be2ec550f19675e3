"""Run outputs a person reads: PNG sample grids and a self-contained HTML report (inline SVG + base64 PNG)."""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vgpo.errors import ConfigError
from vgpo.scoring.images import images_to_uint8


def save_grid(images: torch.Tensor, path: str | Path, columns: int = 8, scale: int = 2) -> Path:
    """Write images [N, 3, H, W] in [0, 1] as one PNG grid (nearest-neighbour upscaled by ``scale``)."""
    n, _, h, w = images.shape
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    grid = np.full((rows * (h + 2), columns * (w + 2), 3), 255, dtype=np.uint8)
    array = images_to_uint8(images)  # [N, H, W, 3]
    for i in range(n):
        r, c = divmod(i, columns)
        grid[r * (h + 2) + 1 : r * (h + 2) + 1 + h, c * (w + 2) + 1 : c * (w + 2) + 1 + w] = array[i]
    image = Image.fromarray(grid)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl. A last line cut short by a kill (no newline, not JSON) is left out, as
    `vgpo train --resume` drops it; a damaged line elsewhere is a ConfigError naming the file and line."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines) and not text.endswith("\n"):
                break  # the write a kill interrupted
            raise ConfigError(f"{path}:{number} is not a JSON record ({error.msg}); the file is damaged") from error
    return records


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 x 10^k apart) covering [low, high], about ``count`` of them."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"ticks need a finite range, got [{low}, {high}]")
    if high <= low:
        return [low]
    raw = (high - low) / max(1, count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _svg_chart(
    title: str,
    series: dict[str, list[tuple[float, float]]],
    *,
    x_label: str = "iteration",
    y_label: str = "",
    width: int = 440,
    height: int = 260,
) -> str:
    """A small line chart as inline SVG (no plotting dependency): ticked and labelled axes, legend below."""
    shown = {name: [(x, y) for x, y in values if math.isfinite(y)] for name, values in series.items()}
    shown = {name: values for name, values in shown.items() if values}
    if not shown:
        return ""
    xs = [x for values in shown.values() for x, _ in values]
    ys = [y for values in shown.values() for _, y in values]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5 * max(abs(y0), 1e-3), y1 + 0.5 * max(abs(y1), 1e-3)
    y_ticks = nice_ticks(y0, y1)
    y0, y1 = min(y0, y_ticks[0]), max(y1, y_ticks[-1])
    x_ticks = [x for x in nice_ticks(x0, x1, 6) if x == int(x)] or [x0, x1]
    left, right, top = 58, 12, 26
    legend_rows = math.ceil(len(shown) / 3)
    plot_bottom = height - 34 - 14 * legend_rows
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return plot_bottom - (y - y0) / (y1 - y0) * (plot_bottom - top)

    parts = [
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="11" style="max-width:100%">',
        f'<text x="{width / 2}" y="14" text-anchor="middle" font-weight="bold">{html.escape(title)}</text>',
    ]
    for y in y_ticks:
        parts.append(f'<line x1="{left}" y1="{sy(y):.1f}" x2="{width - right}" y2="{sy(y):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 4}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.4g}</text>')
    for x in x_ticks:
        parts.append(f'<text x="{sx(x):.1f}" y="{plot_bottom + 13}" text-anchor="middle">{x:g}</text>')
    parts += [
        f'<line x1="{left}" y1="{plot_bottom}" x2="{width - right}" y2="{plot_bottom}" stroke="#999"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{plot_bottom}" stroke="#999"/>',
        f'<text x="{(left + width - right) / 2}" y="{plot_bottom + 26}" text-anchor="middle">{html.escape(x_label)}</text>',
    ]
    if y_label:
        middle = (top + plot_bottom) / 2
        parts.append(
            f'<text x="12" y="{middle}" text-anchor="middle" transform="rotate(-90 12 {middle})">'
            f"{html.escape(y_label)}</text>"
        )
    for i, (name, values) in enumerate(shown.items()):
        colour = colours[i % len(colours)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in values)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{path}"/>')
        if len(values) == 1:
            parts.append(f'<circle cx="{sx(values[0][0]):.1f}" cy="{sy(values[0][1]):.1f}" r="2.5" fill="{colour}"/>')
        row, column = divmod(i, 3)
        lx, ly = left + column * (width - left - right) / 3, height - 8 - 14 * (legend_rows - 1 - row)
        parts.append(
            f'<line x1="{lx:.1f}" y1="{ly - 4}" x2="{lx + 14:.1f}" y2="{ly - 4}" stroke="{colour}" stroke-width="2"/>'
        )
        parts.append(f'<text x="{lx + 18:.1f}" y="{ly}" fill="#222">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _embed_png(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    style = "image-rendering:pixelated;max-width:100%;height:auto"
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}" style="{style}">'


def write_report(run_dir: str | Path) -> Path:
    """Write ``RUN_DIR/report.html``: learning curves, evaluation table, first and last sample grids."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    charts = [
        _svg_chart(
            "training reward (terminal)",
            {"mean over the batch": [(r["iteration"], r["reward_mean"]) for r in train]},
            y_label="reward",
        ),
        _svg_chart(
            "reward std within groups (paper Fig. 1 right)",
            {"mean within-group std": [(r["iteration"], r["group_reward_std"]) for r in train]},
            y_label="reward std",
        ),
        _svg_chart(
            "test accuracy (ODE)",
            {"accuracy": [(r["iteration"], r.get("accuracy", float("nan"))) for r in evals]},
            y_label="accuracy",
        ),
    ]
    if train and "instant_reward_by_step" in train[-1]:  # logged by the TCRM variants only
        by_step = train[-1]["instant_reward_by_step"]
        first = train[0]["instant_reward_by_step"]
        charts.append(
            _svg_chart(
                "instant reward by step (paper Fig. 1 left)",
                {
                    f"iteration {train[0]['iteration']}": list(enumerate(first, start=1)),
                    f"iteration {train[-1]['iteration']}": list(enumerate(by_step, start=1)),
                },
                x_label="sampling step (1 = first, noisiest)",
                y_label="mean instant reward",
            )
        )
    if train:
        charts.append(
            _svg_chart(
                "seconds per phase",
                {
                    phase: [(r["iteration"], r["seconds"].get(phase, float("nan"))) for r in train]
                    for phase in train[-1]["seconds"]
                },
                y_label="seconds",
            )
        )
    table = ""
    if evals:
        # One row per metric, one column per evaluation: a run has few evaluations and many metrics, so this
        # stays within the page; the wrapper scrolls sideways if a long run has more columns than fit.
        keys = [k for k in evals[-1] if k not in ("kind", "iteration", "seconds")]
        head = "<th>iteration</th>" + "".join(f"<th>{_fmt(r.get('iteration'))}</th>" for r in evals)
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
            + "".join(f"<td>{_fmt(r.get(k))}</td>" for r in evals)
            + "</tr>"
            for k in keys
        )
        table = (
            "<div style='overflow-x:auto'><table border=1 cellpadding=3 style='border-collapse:collapse'>"
            f"<tr>{head}</tr>{rows}</table></div>"
        )
    grids = sorted((run_dir / "samples").glob("eval_*.png"))
    images = ""
    if grids:
        shown = [grids[0]] if len(grids) == 1 else [grids[0], grids[-1]]
        images = "".join(
            f"<div style='flex:1 1 480px'><h3>{html.escape(p.stem)}</h3>{_embed_png(p)}</div>" for p in shown
        )
    config = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").exists() else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>vgpo run {html.escape(run_dir.name)}</title></head>
<body style="font-family:sans-serif;max-width:1400px;margin:8px auto;padding:0 8px">
<h1>vgpo run: {html.escape(str(run_dir))}</h1>
<h2>Learning curves</h2><div style="display:flex;flex-wrap:wrap;gap:8px">{"".join(charts)}</div>
<h2>Evaluation</h2>{table}
<h2>Samples (test prompts, ODE): start and end</h2><div style="display:flex;flex-wrap:wrap;gap:16px">{images}</div>
<h2>Config</h2><pre style="white-space:pre-wrap">{html.escape(config)}</pre>
</body></html>"""
    out = run_dir / "report.html"
    out.write_text(page)
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))
