"""Run outputs: PNG grids, the HTML report, TensorBoard scalars."""

import json

import torch
from PIL import Image

from vgpo.loggers import _scalars, tensorboard_logger
from vgpo.report import save_grid, write_report


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


def test_scalars_flatten_nested_records_and_tensorboard_writes_events(tmp_path):
    record = {"kind": "train", "iteration": 3, "reward_mean": 0.5, "seconds": {"sample": 1.5}, "by_step": [1, 2]}
    assert _scalars(record, "train") == {"train/reward_mean": 0.5, "train/seconds/sample": 1.5}
    log = tensorboard_logger(tmp_path / "tb")
    assert log is not None
    log(record)
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
