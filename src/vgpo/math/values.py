"""TCRM's temporal values: discounted long-term values (paper Eq. 11) and value-driven step weights (Eq. 12).

Per-step tensors are [N, T] in generation order: column 0 is the first (noisiest) step, column T-1 the last.
The paper indexes steps t = T..1 backwards; its sum over k of gamma^k R_{t-k} runs from step t to the end of
generation, which in our order is Q[:, i] = sum_{j >= i} gamma^(j - i) R[:, j].
"""

from __future__ import annotations

import torch

from vgpo.math.advantages import group_statistics

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


def calibrated_instant_rewards(instant_rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Each step's projection score replaced by its least-squares prediction of the trajectory's final reward.

    Not in the paper: an option (``algorithm.instant_reward: calibrated``) for when the reward model is lenient with
    the blurry one-step projections of early states, so that Eq. 11 would sum a biased value estimate (measured on
    the embedded compositional task: docs/results.md, "Does a step's projection score predict the final reward?").
    For every step t, fitted on the batch at hand (no extra reward call):

        R~[:, t] = gmean(R_T) + b_t * (R[:, t] - gmean(R[:, t])),
        b_t = max(0, sum (R_t - gmean R_t)(R_T - gmean R_T) / sum (R_t - gmean R_t)^2),

    with gmean the mean over the sample's group (its prompt's G samples) and R_T = R[:, T-1] the final image's
    reward. Choices, documented because the fit could be made other ways:
    - the slope is fitted within groups, as the group-relative advantages only ever see within-group differences;
      a slope across prompts would mix in how hard each prompt is;
    - the level is the group's mean final reward, so a lenient early score cannot lift a step's value above what
      the trajectories of that prompt end with; ADAE's absolute term then anchors to the real outcome;
    - a negative or undefined slope (no within-group spread at step t) gives b_t = 0: a score that does not predict
      the outcome carries no information, and the step's value is the group's mean final reward.
    The last column is returned unchanged (b = 1 there). instant_rewards: R [N, T] in generation order;
    group_ids [N]. Returns [N, T] in R's dtype.
    """
    return calibrate_instant_rewards(instant_rewards, group_ids)[0]


def calibration_slopes(instant_rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """The slopes b_t [T] of :func:`calibrated_instant_rewards` (b_T = 1 unless the final rewards have no
    within-group spread): how much of a step's score difference carries over to the final reward."""
    return calibrate_instant_rewards(instant_rewards, group_ids)[1]


def calibrate_instant_rewards(
    instant_rewards: torch.Tensor, group_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(:func:`calibrated_instant_rewards` [N, T], :func:`calibration_slopes` [T]) from one fit."""
    if instant_rewards.ndim != 2:
        raise ValueError(f"instant_rewards must be [N, T], got shape {tuple(instant_rewards.shape)}")
    mean, _, _ = group_statistics(instant_rewards, group_ids)  # [N, T]
    centred = instant_rewards - mean
    final = centred[:, -1:]  # [N, 1]
    spread = (centred * centred).sum(dim=0)  # [T]
    covariance = (centred * final).sum(dim=0)  # [T]
    slope = torch.where(spread > 0, covariance / torch.where(spread > 0, spread, 1.0), 0.0).clamp(min=0)
    calibrated = mean[:, -1:] + slope * centred
    calibrated[:, -1] = instant_rewards[:, -1]
    return calibrated, slope
