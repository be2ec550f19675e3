"""TCRM's temporal values: discounted long-term values (paper Eq. 11) and value-driven step weights (Eq. 12).

Per-step tensors are [N, T] in generation order: column 0 is the first (noisiest) step, column T-1 the last.
The paper indexes steps t = T..1 backwards; its sum over k of gamma^k R_{t-k} runs from step t to the end of
generation, which in our order is Q[:, i] = sum_{j >= i} gamma^(j - i) R[:, j].
"""

from __future__ import annotations

import torch

DEFAULT_MIN_MEAN = 1e-6


def discounted_values(instant_rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """Monte-Carlo long-term values (paper Eq. 11): Q[:, i] = sum_{j >= i} gamma^(j - i) * R[:, j].

    instant_rewards: R [N, T] in generation order. gamma in [0, 1). Returns Q [N, T] in R's dtype.
    gamma = 0 gives Q = R; the last column is always R[:, T-1] (the final sample's reward).
    """
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma must be in [0, 1), got {gamma}")
    if instant_rewards.ndim != 2:
        raise ValueError(f"instant_rewards must be [N, T], got shape {tuple(instant_rewards.shape)}")
    steps = instant_rewards.shape[1]
    index = torch.arange(steps, device=instant_rewards.device)
    offset = index[:, None] - index[None, :]  # [T(j), T(i)]: j - i
    # discount[j, i] = gamma^(j - i) for j >= i else 0, so Q = R @ discount.
    discount = torch.where(
        offset >= 0,
        torch.tensor(gamma, dtype=instant_rewards.dtype, device=instant_rewards.device) ** offset.clamp(min=0),
        torch.zeros((), dtype=instant_rewards.dtype, device=instant_rewards.device),
    )
    return instant_rewards @ discount


def value_weights(values: torch.Tensor, min_mean: float = DEFAULT_MIN_MEAN) -> torch.Tensor:
    """Value-driven step weights (paper Eq. 12): omega[:, i] = Q[:, i] / mean_j Q[:, j], per trajectory.

    values: Q [N, T]. Returns omega [N, T], finite, mean 1 over steps wherever Eq. 12 is defined.

    Where Eq. 12 is undefined (the paper does not say; reviewers asked), we choose:
    - a trajectory whose mean value is <= ``min_mean`` (zero or negative, possible with signed rewards)
      gets uniform weights omega = 1: dividing would blow up or flip every step's sign, and uniform
      weights are exactly Flow-GRPO's credit assignment, so the step falls back to the baseline;
    - inside a trajectory with a positive mean, a step with a negative value gets weight 0 (a weight is an
      importance and must not flip the direction of that step's advantage). With non-negative rewards,
      which every embedded reward is, neither rule ever applies and Eq. 12 holds exactly.
    """
    if values.ndim != 2:
        raise ValueError(f"values must be [N, T], got shape {tuple(values.shape)}")
    mean = values.mean(dim=1, keepdim=True)  # [N, 1]
    defined = mean > min_mean
    safe_mean = torch.where(defined, mean, torch.ones_like(mean))
    weights = (values / safe_mean).clamp(min=0)
    return torch.where(defined, weights, torch.ones_like(values))
