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


def save_grid(images: torch.Tensor, path: str | Path, columns: int = 8, scale: int = 2) -> Path:
    """Write images [N, 3, H, W] in [0, 1] as one PNG grid (nearest-neighbour upscaled by ``scale``)."""
    n, _, h, w = images.shape
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    grid = np.full((rows * (h + 2), columns * (w + 2), 3), 255, dtype=np.uint8)
    array = (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
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
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _svg_chart(title: str, series: dict[str, list[tuple[float, float]]], width: int = 420, height: int = 220) -> str:
    """A small line chart as inline SVG (no plotting dependency)."""
    points = [p for values in series.values() for p in values if math.isfinite(p[1])]
    if not points:
        return ""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1e-9
    pad = 40
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]

    def sx(x: float) -> float:
        return pad + (x - x0) / (x1 - x0) * (width - 2 * pad)

    def sy(y: float) -> float:
        return height - pad + (y0 - y) / (y1 - y0) * (height - 2 * pad)

    parts = [
        f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="11">',
        f'<text x="{width / 2}" y="14" text-anchor="middle" font-weight="bold">{html.escape(title)}</text>',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#999"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#999"/>',
        f'<text x="{pad - 4}" y="{sy(y1) + 4}" text-anchor="end">{y1:.3g}</text>',
        f'<text x="{pad - 4}" y="{sy(y0) + 4}" text-anchor="end">{y0:.3g}</text>',
        f'<text x="{sx(x0)}" y="{height - pad + 14}" text-anchor="middle">{x0:g}</text>',
        f'<text x="{sx(x1)}" y="{height - pad + 14}" text-anchor="middle">{x1:g}</text>',
    ]
    for i, (name, values) in enumerate(series.items()):
        finite = [(x, y) for x, y in values if math.isfinite(y)]
        if not finite:
            continue
        colour = colours[i % len(colours)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in finite)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{path}"/>')
        parts.append(f'<text x="{width - pad + 2}" y="{pad + 12 * i}" fill="{colour}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _embed_png(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}" style="image-rendering:pixelated">'


def write_report(run_dir: str | Path) -> Path:
    """Write ``RUN_DIR/report.html``: learning curves, evaluation table, first and last sample grids."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    charts = [
        _svg_chart(
            "training reward (terminal)",
            {"mean": [(r["iteration"], r["reward_mean"]) for r in train]},
        ),
        _svg_chart(
            "reward std within groups (paper Fig. 1 right)",
            {"group std": [(r["iteration"], r["group_reward_std"]) for r in train]},
        ),
        _svg_chart(
            "test accuracy (ODE)",
            {"accuracy": [(r["iteration"], r.get("accuracy", float("nan"))) for r in evals]},
        ),
    ]
    if train:
        by_step = train[-1]["instant_reward_by_step"]
        first = train[0]["instant_reward_by_step"]
        charts.append(
            _svg_chart(
                "instant reward by step (paper Fig. 1 left)",
                {
                    f"iter {train[0]['iteration']}": list(enumerate(first)),
                    f"iter {train[-1]['iteration']}": list(enumerate(by_step)),
                },
            )
        )
        charts.append(
            _svg_chart(
                "seconds per phase",
                {
                    phase: [(r["iteration"], r["seconds"].get(phase, float("nan"))) for r in train]
                    for phase in train[-1]["seconds"]
                },
            )
        )
    table = ""
    if evals:
        keys = [k for k in evals[-1] if k not in ("kind", "iteration", "seconds")]
        head = "".join(f"<th>{html.escape(k)}</th>" for k in ["iteration", *keys])
        rows = "".join(
            "<tr>" + "".join(f"<td>{_fmt(r.get(k))}</td>" for k in ["iteration", *keys]) + "</tr>" for r in evals
        )
        table = f"<table border=1 cellpadding=3 style='border-collapse:collapse'><tr>{head}</tr>{rows}</table>"
    grids = sorted((run_dir / "samples").glob("eval_*.png"))
    images = ""
    if grids:
        shown = [grids[0]] if len(grids) == 1 else [grids[0], grids[-1]]
        images = "".join(f"<div><h3>{html.escape(p.stem)}</h3>{_embed_png(p)}</div>" for p in shown)
    config = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").exists() else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>vgpo run {html.escape(run_dir.name)}</title></head>
<body style="font-family:sans-serif;max-width:1400px">
<h1>vgpo run: {html.escape(str(run_dir))}</h1>
<h2>Learning curves</h2><div style="display:flex;flex-wrap:wrap;gap:8px">{"".join(charts)}</div>
<h2>Evaluation</h2>{table}
<h2>Samples (test prompts, ODE): start and end</h2><div style="display:flex;gap:16px">{images}</div>
<h2>Config</h2><pre>{html.escape(config)}</pre>
</body></html>"""
    out = run_dir / "report.html"
    out.write_text(page)
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))
