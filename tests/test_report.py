"""Run outputs: PNG grids, the HTML report, TensorBoard scalars."""

import json
import re

import pytest
import torch
from PIL import Image

from vgpo.experiments.loggers import _scalars, tensorboard_logger
from vgpo.experiments.report import _svg_chart, nice_ticks, save_grid, write_report


def test_grid_has_the_expected_size(tmp_path):
    path = save_grid(torch.rand(5, 3, 8, 8), tmp_path / "g.png", columns=2, scale=2)
    assert Image.open(path).size == (2 * 10 * 2, 3 * 10 * 2)  # 2 columns x 3 rows of 8 px + 2 px borders


def test_report_embeds_curves_table_and_samples(tmp_path):
    records = [
        {"kind": "eval", "iteration": 0, "accuracy": 0.25},
        {
            "kind": "train",
            "iteration": 1,
            "reward_mean": 0.3,
            "group_reward_std": 0.1,
            "instant_reward_by_step": [0.1, 0.2, 0.3],
            "seconds": {"sample": 1.0, "update": 2.0},
        },
        {"kind": "eval", "iteration": 1, "accuracy": 0.5},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    save_grid(torch.rand(2, 3, 8, 8), tmp_path / "samples" / "eval_000000.png")
    save_grid(torch.rand(2, 3, 8, 8), tmp_path / "samples" / "eval_000001.png")
    page = write_report(tmp_path).read_text()
    assert page.count("<svg") == 5 and page.count("data:image/png;base64,") == 2
    assert "<td>0.5000</td>" in page and "instant reward by step" in page
    # The evaluation table is transposed (a row per metric, a column per evaluation) and scrolls, not overflows.
    assert "<tr><th>iteration</th><th>0</th><th>1</th></tr>" in page and "overflow-x:auto" in page
    assert "max-width:100%" in page  # sample grids shrink to the page


def test_report_of_a_run_without_instant_rewards_has_no_such_chart(tmp_path):
    # Flow-GRPO and ADAE-only runs score the final image only: no per-step chart, the other charts stay.
    train = {"kind": "train", "iteration": 1, "reward_mean": 0.3, "group_reward_std": 0.1, "seconds": {"sample": 1.0}}
    evaluation = {"kind": "eval", "iteration": 1, "accuracy": 0.5}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(train) + "\n" + json.dumps(evaluation) + "\n")
    page = write_report(tmp_path).read_text()
    assert "instant reward by step" not in page and "seconds per phase" in page and page.count("<svg") == 4


def test_nice_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0.0, 1.0) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert nice_ticks(0.0625, 0.0781) == [0.065, 0.07, 0.075]
    assert nice_ticks(1, 40, 6) == [10.0, 20.0, 30.0, 40.0]
    assert nice_ticks(3.0, 3.0) == [3.0]
    with pytest.raises(ValueError, match="finite"):
        nice_ticks(0.0, float("nan"))


def test_chart_has_labelled_axes_and_every_legend_entry_whole():
    names = ["sample", "reward", "advantage", "update"]
    svg = _svg_chart("seconds per phase", {n: [(1, i), (2, i + 1.0)] for i, n in enumerate(names)}, y_label="seconds")
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    assert set(names) <= set(texts) and "iteration" in texts and "seconds" in texts
    assert {"0", "1", "2", "3", "4"} <= set(texts)  # y ticks at round values
    # Legend entries sit below the plot, inside the drawing: none starts past the right edge.
    width = float(re.search(r'width="(\d+)"', svg).group(1))
    legend_x = [float(x) for x, t in re.findall(r'<text x="([\d.]+)"[^>]*fill="#222">([^<]*)</text>', svg)]
    assert len(legend_x) == 4 and max(legend_x) < width * 0.75


def test_scalars_flatten_nested_records_and_tensorboard_writes_events(tmp_path):
    record = {"kind": "train", "iteration": 3, "reward_mean": 0.5, "seconds": {"sample": 1.5}, "by_step": [1, 2]}
    assert _scalars(record, "train") == {"train/reward_mean": 0.5, "train/seconds/sample": 1.5}
    log = tensorboard_logger(tmp_path / "tb")
    assert log is not None
    log(record)
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


def test_read_metrics_leaves_out_a_line_a_kill_cut_short_and_names_a_damaged_one(tmp_path):
    import pytest

    from vgpo.errors import ConfigError
    from vgpo.experiments.report import read_metrics

    (tmp_path / "metrics.jsonl").write_text('{"iteration": 1}\n{"iteration": 2, "rew')
    assert read_metrics(tmp_path) == [{"iteration": 1}]
    (tmp_path / "metrics.jsonl").write_text('{"iteration": 1}\n{"iter\n{"iteration": 3}\n')
    with pytest.raises(ConfigError, match=r"metrics\.jsonl:2 is not a JSON record"):
        read_metrics(tmp_path)
