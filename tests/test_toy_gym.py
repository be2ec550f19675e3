"""The toy gym: the gym's tuning and study procedure on the analytic toy, in process, scored by the exact
expected reward."""

import json
import math
from pathlib import Path

import pytest

from vgpo.experiments.toy_gym import toy_gym


def test_the_toy_gym_tunes_studies_and_resumes(tmp_path: Path) -> None:
    def gym(echo: list[str]) -> dict:
        small = {"tune_iterations": 2, "iterations": 4, "eval_every": 2}
        return toy_gym(
            tmp_path, ["flow_grpo", "awm"], [0], grid="optim.learning_rate=0.01,0.1", **small, echo=echo.append
        )

    results = gym([])
    settings = json.loads((tmp_path / "tuning" / "settings.json").read_text())
    assert set(settings) == {"flow_grpo", "awm"}
    for method in ("flow_grpo", "awm"):
        cell = results["conditions"][f"{method}-kl0"]
        assert cell["settings"] == settings[method]
        score = cell["eval"]["score"]
        assert score["iterations"] == [0, 2, 4]
        # the means start at 0: the expected reward of N(0, s^2 I), 12 elements each 0.6 from its target, s = 0.5,
        # w = 12: (1 + 2 s^2 / w)^(-12 / 2) exp(-12 x 0.36 / (w + 2 s^2)) = 0.5540
        assert score["mean"][0] == pytest.approx(
            (1 + 0.5 / 12) ** -6 * math.exp(-4.32 / 12.5), rel=1e-7
        )  # 0.6 in float32
        assert score["mean"][-1] > score["mean"][0]  # both methods learn within 4 iterations at their chosen rate
    assert "| flow_grpo-kl0 | 0 | 4 |" in (tmp_path / "tables.md").read_text()
    assert (tmp_path / "gain_by_compute.png").is_file()
    again: list[str] = []
    gym(again)
    assert sum("done earlier, skipped" in line for line in again) == 6  # 2 methods x (2 rates + the study)


def test_overrides_reach_every_run_of_the_toy_gym(tmp_path: Path) -> None:
    # a method's own recipe (DanceGRPO's eta 0.3) set once applies to the tuning runs and the study's runs alike
    toy_gym(
        tmp_path,
        ["dance_grpo"],
        [0],
        grid="optim.learning_rate=0.1",
        tune_iterations=1,
        iterations=1,
        eval_every=1,
        overrides=["sampling.noise_level=0.3"],
        echo=lambda line: None,
    )
    configs = sorted(tmp_path.glob("**/runs/*/config.yaml"))
    assert len(configs) == 2  # the tuning run and the study run
    for config in configs:
        assert "noise_level: 0.3" in config.read_text()
