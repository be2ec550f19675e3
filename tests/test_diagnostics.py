"""projection_faithfulness against hand-worked correlations."""

import math

import torch

from vgpo.math.tcrm_diagnostics import projection_faithfulness


def test_known_correlations_and_the_no_spread_case() -> None:
    # 4 samples, 2 groups of 2, 3 steps. Column 0 = final reversed (corr -1), column 1 constant (no spread: NaN),
    # column 2 = the final reward itself (corr 1).
    final = torch.tensor([0.1, 0.3, 0.6, 0.8], dtype=torch.float64)
    rewards = torch.stack([0.9 - final, torch.full((4,), 0.5), final], dim=1)
    groups = torch.tensor([0, 0, 1, 1])
    result = projection_faithfulness(rewards, groups)
    assert math.isclose(result["correlation"][0], -1.0, abs_tol=1e-12)
    assert math.isnan(result["correlation"][1])
    assert math.isclose(result["correlation"][2], 1.0, abs_tol=1e-12)
    # mean of R_0 - R_T = mean(0.9 - 2 * final) = 0.9 - 2 * 0.45 = 0
    assert math.isclose(result["mean_minus_final"][0], 0.0, abs_tol=1e-12)
    assert math.isclose(result["mean_minus_final"][1], 0.5 - 0.45, abs_tol=1e-12)


def test_within_group_correlation_ignores_differences_between_prompts() -> None:
    # Step 0 tracks only which prompt is easy (group means), not the ranking inside a group: overall it correlates
    # strongly with the final reward, within groups it ranks the samples backwards.
    final = torch.tensor([0.1, 0.2, 0.8, 0.9])
    step0 = torch.tensor([0.2, 0.1, 0.9, 0.8])
    result = projection_faithfulness(torch.stack([step0, final], dim=1), torch.tensor([0, 0, 1, 1]))
    assert result["correlation"][0] > 0.9
    # centred: step0 -> [+.05, -.05, +.05, -.05], final -> [-.05, +.05, -.05, +.05]: correlation -1
    assert math.isclose(result["within_group_correlation"][0], -1.0, abs_tol=1e-12)
    assert math.isclose(result["within_group_correlation"][1], 1.0, abs_tol=1e-12)
