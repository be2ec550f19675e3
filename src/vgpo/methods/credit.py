"""Credit: from an iteration's rewards to per-step advantages, the signal the objective weights each step by.

    GRPO          A_t = GRPO(r(x0))                     every step the terminal advantage (Eq. 4, Eq. 8)
    TCRM          A_t = omega_t * GRPO_t(Q_t)           TCRM values (Eq. 11) and weights (Eq. 12), no absolute term
    ADAE          A_t = ADAE_t(r(x0))                   the adaptive dual advantage on the terminal reward (Eq. 14)
    VGPO          A_t = ADAE_t(Q_t) with omega_t        TCRM + ADAE
    stepwise      A_t = GRPO_t(R_t - R_{t-1})           per-step gains of the projection rewards (Stepwise-Flow-GRPO)

A credit says whether it needs step rewards (``needs_step_rewards``): the trainer then has every step's one-step
projection scored (TCRM, Eq. 9-10), otherwise the final sample only. Nothing else names a method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from vgpo.errors import ConfigError
from vgpo.math import (
    adae_advantages,
    calibrate_instant_rewards,
    discounted_values,
    grpo_advantages,
    value_weights,
)

StdScope = Literal["group", "global"]


@dataclass(frozen=True)
class Rewards:
    """An iteration's rewards, N samples in global order.

    terminal: r(x0) of the final samples [N].
    steps: R_t, the reward of the one-step projection after step t [N, T] (column T-1 is the final sample, so it
    equals ``terminal``), or None when the credit did not ask for step rewards.
    """

    terminal: torch.Tensor
    steps: torch.Tensor | None = None


@dataclass
class CreditResult:
    """advantages [N, T]; values Q [N, T] (the terminal reward broadcast when there are no step values); weights
    [N, T]; calibration_slopes [T] when TCRM's instant rewards were calibrated, else None."""

    advantages: torch.Tensor
    values: torch.Tensor
    weights: torch.Tensor
    calibration_slopes: torch.Tensor | None = None


class Credit(Protocol):
    """Turns rewards into per-step advantages [N, T]."""

    @property
    def needs_step_rewards(self) -> bool:
        """Whether every step's projection must be scored (else the final sample only)."""
        ...

    def __call__(self, rewards: Rewards, group_ids: torch.Tensor, sigmas: torch.Tensor) -> CreditResult:
        """rewards of N samples; group_ids [N]; sigmas the schedule [T + 1] (for noise-aware weights)."""
        ...


def _terminal_values(rewards: Rewards, steps: int) -> torch.Tensor:
    """The terminal reward on every step [N, T]: A_t = A(x0) (Eq. 8)."""
    return rewards.terminal[:, None].expand(-1, steps)


def _step_values(
    rewards: Rewards, gamma: float, calibrated: bool, group_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """TCRM: the discounted values Q [N, T] (Eq. 11) of the (optionally calibrated) instant rewards, and slopes."""
    if rewards.steps is None:
        raise ValueError("this credit needs step rewards (TCRM's projections); the scorer gave the terminal only")
    instant, slopes = rewards.steps, None
    if calibrated:
        instant, slopes = calibrate_instant_rewards(instant, group_ids)
    return discounted_values(instant, gamma), slopes


@dataclass(frozen=True)
class GroupRelative:
    """GRPO (Eq. 4): the terminal reward's group-relative advantage on every step."""

    std_scope: StdScope = "group"
    needs_step_rewards: bool = False

    def __call__(self, rewards: Rewards, group_ids: torch.Tensor, sigmas: torch.Tensor) -> CreditResult:
        steps = int(sigmas.shape[0]) - 1
        values = _terminal_values(rewards, steps)
        weights = torch.ones_like(values)
        terminal = grpo_advantages(values[:, -1], group_ids, std_scope=self.std_scope)  # Eq. 4
        advantages = terminal[:, None].expand(-1, steps)
        return CreditResult(advantages.contiguous(), values.contiguous(), weights.contiguous())


@dataclass(frozen=True)
class TCRM:
    """TCRM alone: A_t = omega_t * GRPO_t(Q_t) (Eq. 11, 12, 13; no absolute term)."""

    gamma: float = 0.9
    std_scope: StdScope = "group"
    calibrated: bool = False
    needs_step_rewards: bool = True

    def __call__(self, rewards: Rewards, group_ids: torch.Tensor, sigmas: torch.Tensor) -> CreditResult:
        values, slopes = _step_values(rewards, self.gamma, self.calibrated, group_ids)  # Eq. 11
        weights = value_weights(values)  # Eq. 12
        advantages = weights * grpo_advantages(values, group_ids, std_scope=self.std_scope)  # Eq. 13 x omega
        return CreditResult(advantages.contiguous(), values.contiguous(), weights.contiguous(), slopes)


def _refuse_global_std(std_scope: StdScope) -> None:
    # ADAE's statistics are the group's by definition (Eq. 14: alpha = k * std_group); a global std has no meaning
    if std_scope != "group":
        raise ConfigError(
            f"algorithm.std_scope={std_scope!r} does not apply to ADAE, whose statistics are per prompt group "
            "(Eq. 14); use std_scope: group with this method, or a GRPO method for the global std"
        )


@dataclass(frozen=True)
class ADAE:
    """ADAE (Eq. 14) on the terminal reward: A_t = (r - mean) / std + k * r on the first ``absolute_steps``."""

    k: float = 0.5
    absolute_steps: int | None = 5
    std_scope: StdScope = "group"
    needs_step_rewards: bool = False

    def __post_init__(self) -> None:
        _refuse_global_std(self.std_scope)

    def __call__(self, rewards: Rewards, group_ids: torch.Tensor, sigmas: torch.Tensor) -> CreditResult:
        values = _terminal_values(rewards, int(sigmas.shape[0]) - 1)
        weights = torch.ones_like(values)
        advantages = adae_advantages(values, group_ids, k=self.k, weights=None, absolute_steps=self.absolute_steps)
        return CreditResult(advantages.contiguous(), values.contiguous(), weights.contiguous())


@dataclass(frozen=True)
class VGPOCredit:
    """VGPO: ADAE (Eq. 14) on TCRM's values Q_t (Eq. 11), weighted by omega_t (Eq. 12)."""

    gamma: float = 0.9
    k: float = 0.5
    absolute_steps: int | None = 5
    calibrated: bool = False
    std_scope: StdScope = "group"
    needs_step_rewards: bool = True

    def __post_init__(self) -> None:
        _refuse_global_std(self.std_scope)

    def __call__(self, rewards: Rewards, group_ids: torch.Tensor, sigmas: torch.Tensor) -> CreditResult:
        values, slopes = _step_values(rewards, self.gamma, self.calibrated, group_ids)  # Eq. 11
        weights = value_weights(values)  # Eq. 12
        advantages = adae_advantages(  # Eq. 14
            values, group_ids, k=self.k, weights=weights, absolute_steps=self.absolute_steps
        )
        return CreditResult(advantages.contiguous(), values.contiguous(), weights.contiguous(), slopes)


def step_gains(step_rewards: torch.Tensor) -> torch.Tensor:
    """Per-step gains g_t = R_t - R_{t-1} of the projection rewards [N, T] (Stepwise-Flow-GRPO, arXiv 2603.28718,
    writes g_t = r_{t-1} - r_t with t counting down; no public code was found). The source is silent on the first
    step: vgpo takes g_0 = R_0, the gain from nothing (the projection of pure noise is not scored, which would cost
    N more reward calls), so the gains of a trajectory sum to its final reward R_{T-1}.
    """
    previous = torch.cat([torch.zeros_like(step_rewards[:, :1]), step_rewards[:, :-1]], dim=1)
    return step_rewards - previous


@dataclass(frozen=True)
class StepwiseGains:
    """Stepwise-Flow-GRPO: each step's reward is the gain of its projection's reward over the previous step's,
    g_t = R_t - R_{t-1} (:func:`step_gains`), normalised per step within the group (GRPO per step)."""

    std_scope: StdScope = "group"
    needs_step_rewards: bool = True

    def __call__(self, rewards: Rewards, group_ids: torch.Tensor, sigmas: torch.Tensor) -> CreditResult:
        if rewards.steps is None:
            raise ValueError("stepwise gains need step rewards (the projections' rewards)")
        gains = step_gains(rewards.steps)
        advantages = grpo_advantages(gains, group_ids, std_scope=self.std_scope)
        return CreditResult(advantages.contiguous(), gains.contiguous(), torch.ones_like(gains))
