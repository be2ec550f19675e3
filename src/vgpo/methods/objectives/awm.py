"""Advantage Weighted Matching (AWM; arXiv 2509.25050, scxue/advantage_weighted_matching, ``train_sd3_awm.py``):
the pretraining flow-matching loss on the rollouts' final samples, each sample's loss weighted by its advantage.

For a sample x0 with group-relative advantage A, a fresh time t and fresh noise eps (x_t = (1 - t) x0 + t eps):
    l(t)  = mean((v_theta(x_t, t) - (eps - x0))^2)           the flow-matching loss (target: the path's velocity)
    A_hat = clip(A, -c, c) / c                              c = advantage_clip (the source: 5)
    loss  = A_hat w(t) l(t)  +  kl_beta mean((v_theta - v_ref)^2)
The source writes the policy term as -A * ratio with log-ratio -w(t) l(t) on-policy, i.e. exactly the above
(ratio = 1 at every on-policy step, so its clipping never acts). w(t): "uniform" (1; the source's default and the
paper's preference) or "t" (w = t). The source's third option ("ghuber") is not offered: its formula was not
checked against the source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from vgpo.errors import ConfigError
from vgpo.methods.objectives import StepModel, TermLoss, UpdateBatch, forward_process_slots, noised_again
from vgpo.methods.samplers import StepPlan

AWMWeighting = Literal["uniform", "t"]


def time_weights(t: torch.Tensor, weighting: AWMWeighting) -> torch.Tensor:
    """w(t) [N] for noise levels t [N]."""
    return torch.ones_like(t) if weighting == "uniform" else t


def awm_loss(
    velocity: torch.Tensor,
    x0: torch.Tensor,
    eps: torch.Tensor,
    t: torch.Tensor,
    advantages: torch.Tensor,
    clip: float,
    weighting: AWMWeighting = "uniform",
) -> tuple[torch.Tensor, torch.Tensor]:
    """AWM's policy loss (the mean over N samples) and the per-sample flow-matching loss l [N].

    velocity: v_theta(x_t, t) [N, C, H, W]; x0, eps [N, C, H, W]; t [N]; advantages A [N] (clipped to +-clip, then
    divided by it)."""
    dims = tuple(range(1, x0.ndim))
    matching = (velocity - (eps - x0)).pow(2).mean(dim=dims)  # l [N]
    scaled = advantages.clamp(-clip, clip) / clip
    return (scaled * time_weights(t, weighting).to(matching.dtype) * matching).mean(), matching


@dataclass(frozen=True)
class AWMObjective:
    """AWM's loss (module docstring) on one chunk at one fresh noise level per sample; the noise levels are the
    rollout's own sigma_0 .. sigma_{T-1}, a per-sample random subset of int(T * train_step_fraction) of them (the
    same draw as DiffusionNFT's, `vgpo.methods.objectives.forward_process_slots`). Each term's advantage is the credit's at the
    slot's noise level: GRPO's terminal advantage (the same at every level), or with ``forward_credit: vgpo`` TCRM's
    per-step value advantage (docs/algorithms.md says what that means here)."""

    advantage_clip: float = 5.0
    kl_beta: float = 0.0
    weighting: AWMWeighting = "uniform"
    train_step_fraction: float = 0.99
    needs_log_probs: bool = False
    needs_rollout_means: bool = False
    stat_names: tuple[str, ...] = ("loss", "policy_loss", "kl", "matching_loss")
    first_step_names: tuple[str, ...] = ()

    def check(self, plan: StepPlan) -> None:
        if self.advantage_clip <= 0:
            raise ConfigError(f"AWM needs algorithm.advantage_clip > 0 (A / c), got {self.advantage_clip}")
        if self.weighting not in ("uniform", "t"):
            raise ConfigError(f"unknown algorithm.awm_weighting {self.weighting!r}; choose uniform or t")
        if int(plan.num_steps * self.train_step_fraction) < 1:
            raise ConfigError(
                f"algorithm.train_step_fraction={self.train_step_fraction} trains int({plan.num_steps} x "
                f"{self.train_step_fraction}) = 0 noise levels per sample; raise it"
            )

    def draw_slots(self, plan: StepPlan, total: int, generator: torch.Generator) -> torch.Tensor:
        return forward_process_slots(plan, total, self.train_step_fraction, generator)

    def term(
        self, model: StepModel, batch: UpdateBatch, rows: torch.Tensor, slots: torch.Tensor, on_policy: bool
    ) -> TermLoss:
        x0, eps, x_t, t, cond = noised_again(batch, rows, slots)
        reference_velocity = None
        if self.kl_beta > 0:
            with model.reference():
                reference_velocity = model.velocity(x_t, t, cond)
        velocity = model.velocity(x_t, t, cond)
        step = (slots % batch.plan.num_steps).to(batch.advantages.device)  # [m] the slot's noise level
        advantages = batch.advantages[rows.to(batch.advantages.device), step].to(velocity.device)  # [m]
        policy_loss, matching = awm_loss(velocity, x0, eps, t, advantages, self.advantage_clip, self.weighting)
        loss, kl = policy_loss, torch.zeros(())
        if reference_velocity is not None:
            kl = (velocity - reference_velocity).pow(2).mean()
            loss = loss + self.kl_beta * kl
        return TermLoss(
            loss=loss, stats={"loss": loss, "policy_loss": policy_loss, "kl": kl, "matching_loss": matching.mean()}
        )
