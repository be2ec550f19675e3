"""Advantage Weighted Matching (AWM; arXiv 2509.25050, scxue/advantage_weighted_matching, ``train_sd3_awm.py``):
the pretraining flow-matching loss on the rollouts' final samples, each sample's loss weighted by its advantage.

For a sample x0 with group-relative advantage A, a fresh time t and fresh noise eps (x_t = (1 - t) x0 + t eps):
    l(t)  = mean((v_theta(x_t, t) - (eps - x0))^2)           the flow-matching loss (target: the path's velocity)
    A_hat = clip(A, -c, c) / c                              c = advantage_clip (the source: 5)
    loss  = A_hat g(l, t)  +  kl_beta mean((v_theta - v_ref)^2)
The source writes the policy term as -A * ratio with log-ratio -g(l, t) on-policy (``compute_log_prob_awm``), i.e.
exactly the above (ratio = 1 at every on-policy step, so its clipping never acts). g, ``algorithm.awm_weighting``:
    uniform   g = l                                   the source's function default ("Uniform")
    t         g = t l
    ghuber    g = t ((l + 1e-10)^p - (1e-10)^p) / p   p = algorithm.awm_ghuber_power; the setting of every config
                                                      the source ships (dgx_awm.py: geneval, ocr, pickscore; p 0.25)
ghuber is a generalised Huber loss: its gradient is t (l + 1e-10)^(p - 1) dl, so samples the model already fits
badly (large l) weigh less than under ``t``; p = 1 is ``t`` exactly. The source's "huber" equals ghuber at p = 0.5
halved (and shifted by a constant), and its "t**2" appears in no shipped config; neither is offered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

from vgpo.errors import ConfigError
from vgpo.methods.objectives import (
    StepModel,
    TermLoss,
    UpdateBatch,
    check_forward_levels,
    forward_process_slots,
    noised_again,
    slot_advantages,
)
from vgpo.methods.samplers import StepPlan

AWMWeighting = Literal["uniform", "t", "ghuber"]
AWM_WEIGHTINGS: tuple[str, ...] = get_args(AWMWeighting)
GHUBER_FLOOR = 1e-10
"""The source's 1e-10 inside the power: keeps the gradient (l + 1e-10)^(p - 1) finite at l = 0."""


def weighted_matching(
    matching: torch.Tensor, t: torch.Tensor, weighting: AWMWeighting, ghuber_power: float = 0.25
) -> torch.Tensor:
    """g(l, t) [N] (module docstring) for per-sample flow-matching losses l [N] at noise levels t [N]."""
    t = t.to(matching.dtype)
    if weighting == "uniform":
        return matching
    if weighting == "t":
        return t * matching
    p = ghuber_power
    return t * ((matching + GHUBER_FLOOR).pow(p) - GHUBER_FLOOR**p) / p


def awm_loss(
    velocity: torch.Tensor,
    x0: torch.Tensor,
    eps: torch.Tensor,
    t: torch.Tensor,
    advantages: torch.Tensor,
    clip: float,
    weighting: AWMWeighting = "uniform",
    ghuber_power: float = 0.25,
) -> tuple[torch.Tensor, torch.Tensor]:
    """AWM's policy loss (the mean over N samples) and the per-sample flow-matching loss l [N].

    velocity: v_theta(x_t, t) [N, C, H, W]; x0, eps [N, C, H, W]; t [N]; advantages A [N] (clipped to +-clip, then
    divided by it)."""
    dims = tuple(range(1, x0.ndim))
    matching = (velocity - (eps - x0)).pow(2).mean(dim=dims)  # l [N]
    scaled = advantages.clamp(-clip, clip) / clip
    return (scaled * weighted_matching(matching, t, weighting, ghuber_power)).mean(), matching


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
    ghuber_power: float = 0.25
    needs_log_probs: bool = False
    needs_rollout_means: bool = False
    stat_names: tuple[str, ...] = ("loss", "policy_loss", "kl", "matching_loss")
    first_step_names: tuple[str, ...] = ()

    def check(self, plan: StepPlan) -> None:
        if self.advantage_clip <= 0:
            raise ConfigError(f"AWM needs algorithm.advantage_clip > 0 (A / c), got {self.advantage_clip}")
        if self.weighting not in AWM_WEIGHTINGS:
            raise ConfigError(
                f"unknown algorithm.awm_weighting {self.weighting!r}; choose one of {', '.join(AWM_WEIGHTINGS)}"
            )
        if self.weighting == "ghuber" and not self.ghuber_power > 0:
            raise ConfigError(
                f"algorithm.awm_ghuber_power must be > 0 (AWM's configs: 0.25; 1 is awm_weighting: t), "
                f"got {self.ghuber_power}"
            )
        check_forward_levels(plan, self.train_step_fraction)

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
        advantages = slot_advantages(batch, rows, slots).to(velocity.device)  # [m]
        policy_loss, matching = awm_loss(
            velocity, x0, eps, t, advantages, self.advantage_clip, self.weighting, self.ghuber_power
        )
        loss, kl = policy_loss, torch.zeros(())
        if reference_velocity is not None:
            kl = (velocity - reference_velocity).pow(2).mean()
            loss = loss + self.kl_beta * kl
        return TermLoss(
            loss=loss, stats={"loss": loss, "policy_loss": policy_loss, "kl": kl, "matching_loss": matching.mean()}
        )
