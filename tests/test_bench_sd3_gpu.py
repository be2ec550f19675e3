"""bench/sd3_gpu.py, the GPU benchmark of issue 14, on the tiny random SD3 pipeline on the CPU: every part runs and
writes the rows the GPU run will write; a measurement past the time budget is recorded as skipped."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "sd3_gpu.py"
SMALL = ["--size", "tiny", "--device", "cpu", "--group-sizes", "2", "4", "--steps", "2"]
SMALL += ["--decode-batch-sizes", "2", "4", "--decode-images", "4", "--update-micro-batches", "1", "2"]


def rows_of(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


def test_tiny_run_writes_every_row_and_the_tables(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *SMALL, "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = rows_of(tmp_path)
    kinds = [row["kind"] for row in rows]
    assert kinds[:2] == ["environment", "build"] and kinds[-1] == "done"
    assert rows[0]["device"] and rows[0]["torch"] and rows[0]["diffusers"]

    train = [row for row in rows if row["kind"] == "train"]
    assert [(row["variant"], row["group_size"]) for row in train] == [
        ("flow_grpo", 2),
        ("vgpo", 2),
        ("flow_grpo", 4),
        ("vgpo", 4),
    ]
    for row in train:
        assert set(row["seconds"]) == {"sample", "reward", "advantage", "update"}
        assert row["images_per_s"] > 0 and row["peak_gib"] is None  # peak memory is CUDA's
        assert row["first_ratio_error"] == 0.0  # the first optimizer step's old log-prob is its own, detached
        assert row["rollout_log_prob_gap"] >= 0.0

    decode = [(row["decoder"], row["batch"]) for row in rows if row["kind"] == "decode"]
    assert decode == [(d, b) for d in ("plain", "channels_last", "tiled", "tiny_vae") for b in (2, 4)]
    skipped = [row for row in rows if row["kind"] == "skipped"]
    assert [(row["part"], row["name"]) for row in skipped] == [("decode", "compiled")]  # CUDA only

    assert [row["micro_batch"] for row in rows if row["kind"] == "microbatch"] == [1, 2]
    assert [row["largest_fitting"] for row in rows if row["kind"] == "microbatch_largest"] == [2]
    assert not [row for row in rows if row["kind"] == "error"]

    table = (tmp_path / "results.md").read_text()
    for title in ("## Training iterations", "## VAE decode", "## Update micro-batch", "Largest micro-batch"):
        assert title in table
    assert table.count("| vgpo |") == 2


def test_measurements_past_the_budget_are_recorded_as_skipped(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("sd3_gpu", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    assert bench.main([*SMALL, "--parts", "train", "microbatch", "--budget-s", "0", "--out", str(tmp_path)]) == 0
    rows = rows_of(tmp_path)
    skipped = [(row["part"], row["name"]) for row in rows if row["kind"] == "skipped"]
    assert skipped == [
        ("train", "flow_grpo G=2"),
        ("train", "vgpo G=2"),
        ("train", "flow_grpo G=4"),
        ("train", "vgpo G=4"),
        ("microbatch", "micro-batch 1"),
    ]
    assert all(row["reason"].startswith("budget:") for row in rows if row["kind"] == "skipped")
    assert "## Skipped or failed" in (tmp_path / "results.md").read_text()
