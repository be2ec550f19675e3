"""bench/sd3_cpu_memory.py (issue 25) on its tiny config: one measuring process per micro-batch writes every phase's
peak RSS to the JSON and the table, with the LoRA layout and token counts of the config it built."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "sd3_cpu_memory.py"
PHASES = [
    "weights",
    "step1.forward",
    "step1.backward",
    "step1.optimizer",
    "step2.forward",
    "step2.reference_forward",
    "step2.backward",
    "step2.optimizer",
]


def test_small_run_writes_every_phase(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--small", "--micro-batches", "1", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["environment"]["size"] == "small" and report["environment"]["torch"]
    (result,) = report["results"]
    assert result["returncode"] == 0 and "error" not in result
    rows = {row["phase"]: row for row in result["phases"]}
    assert [row["phase"] for row in result["phases"]] == ["imports", *PHASES]
    weights = rows["weights"]
    # the tiny transformer: block 0 (dual attention) adapts 8 joint + 4 attn2 projections, block 1 (the last,
    # context_pre_only: no to_add_out) 7; each 16 x 16, so r (16 + 16) = 32 x 32 LoRA weights
    assert weights["lora_params"] == 19 * 32 * (16 + 16)
    assert weights["image_tokens"] == (16 // 2) ** 2 and weights["text_tokens"] == 8
    assert weights["transformer_rows"] == 2  # CFG: the negative-prompt row and the prompt row
    for name in PHASES:
        row = rows[name]
        assert row["peak_reset"] is True  # Linux resets VmHWM on request, so each peak is the phase's own
        assert row["peak_rss_gib"] >= row["rss_end_gib"] > 0
    assert "grads_gib" in rows["step2.backward"] and "optimizer_state_gib" in rows["step2.optimizer"]
    assert result["step_peak_rss_gib"] == max(rows[name]["peak_rss_gib"] for name in PHASES[1:])
    table = out.with_suffix(".md").read_text()
    assert table.count("| 1 | step") == 7 and "reference_forward" in table
    assert not list(tmp_path.glob("*.log"))  # the phase log is read back and removed


def test_a_measurement_without_enough_memory_is_skipped(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("sd3_cpu_memory", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    out = tmp_path / "memory.json"
    assert bench.main(["--small", "--min-available-gib", "1e9", "--out", str(out)]) == 1
    results = json.loads(out.read_text())["results"]
    assert [r["micro_batch"] for r in results] == [1, 2]
    assert all(r["skipped"].startswith("MemAvailable") for r in results)
    assert "skipped: MemAvailable" in out.with_suffix(".md").read_text()
