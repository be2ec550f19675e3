"""Diagnostics of TCRM's dense reward: does a step's projection score predict its trajectory's final reward?

Eq. 11 treats the discounted sum of instant rewards as a value estimate; that is sound only if the score of the
one-step projection at step t carries information about where the trajectory ends. These functions measure it
from one iteration's rewards [N, T] (generation order; the last column is the final sample's reward).
"""

from __future__ import annotations

import torch


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of the columns of a [N, T] with b [N]; NaN where a column or b has no spread."""
    a = a - a.mean(dim=0, keepdim=True)
    b = b - b.mean()
    denominator = a.norm(dim=0) * b.norm()
    correlation = (a * b[:, None]).sum(dim=0) / denominator
    return torch.where(denominator > 0, correlation, torch.full_like(correlation, float("nan")))


def projection_faithfulness(rewards: torch.Tensor, group_ids: torch.Tensor) -> dict[str, list[float]]:
    """Per step t, how well R_t (the projection's score) predicts R_T (the final reward).

    rewards [N, T] float, group_ids [N]. Returns lists of length T:
      ``correlation``: Pearson correlation of R_t and R_T over all N samples;
      ``within_group_correlation``: the same after subtracting each prompt group's mean from both, i.e. whether
        step t ranks a group's samples as the final reward does, which is what group-relative advantages use;
      ``mean_minus_final``: mean of R_t - R_T (> 0: the projection scores higher than where the trajectory ends).
    NaN where a quantity has no spread (e.g. every sample scored alike).
    """
    rewards = rewards.double()
    final = rewards[:, -1]
    _, inverse = torch.unique(group_ids, return_inverse=True)
    groups = int(inverse.max()) + 1
    counts = torch.bincount(inverse, minlength=groups).double()  # [groups]
    group_means = torch.zeros(groups, rewards.shape[1], dtype=rewards.dtype).index_add_(0, inverse, rewards)
    centred = rewards - (group_means / counts[:, None])[inverse]  # [N, T], group means removed
    return {
        "correlation": [float(x) for x in _pearson(rewards, final)],
        "within_group_correlation": [float(x) for x in _pearson(centred, centred[:, -1])],
        "mean_minus_final": [float(x) for x in (rewards - final[:, None]).mean(dim=0)],
    }
