"""DiffusionNFT (arXiv 2509.16117; NVlabs/DiffusionNFT, ``scripts/train_nft_sd3.py``): online RL on the forward
process. Rollouts come from any sampler (here the ODE sampler, CFG-free as in the source) run by the *old*
(sampling) policy; the final samples x0 are noised again at fresh times and the velocity is trained towards an
implicit positive policy on good samples and away from an implicit negative one on bad ones. No log-prob is needed.

For a sample x0 with group-relative advantage A, a time t and fresh noise eps (x_t = (1 - t) x0 + t eps):
    r      = clamp(clip(A, -c, c) / (2 c) + 1/2, 0, 1)                  optimality probability, c = adv_clip_max
    v+     = beta v_theta + (1 - beta) sg(v_old)                        implicit positive policy
    v-     = (1 + beta) sg(v_old) - beta v_theta                        implicit negative policy
    x0+-   = x_t - t v+-                                                their predictions of x0
    L+-    = mean((x0+- - x0)^2) / sg(max(mean|x0+- - x0|, 1e-5))       adaptive-weighted flow-matching losses
    loss   = c (r L+ + (1 - r) L-) / beta  +  kl_beta mean((v_theta - v_ref)^2)
and after each iteration's update the sampling policy follows the trained one softly:
    old <- d old + (1 - d) theta,   d = min(0.001 * optimizer_steps, 0.5)     (the source's decay_type 1)
"""

from __future__ import annotations

from dataclasses import dataclass

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

ADAPTIVE_WEIGHT_FLOOR = 1e-5  # the source's clip(min=0.00001) of the per-sample mean |x0_pred - x0|


def optimality_probability(advantages: torch.Tensor, clip: float) -> torch.Tensor:
    """r = clamp(clip(A, -c, c) / (2 c) + 1/2, 0, 1) [N]: 0 for the worst sample of a group, 1/2 for an average one,
    1 for the best (the source's ``normalized_advantages_clip / 2 + 0.5`` on advantages divided by c)."""
    return (advantages.clamp(-clip, clip) / (2 * clip) + 0.5).clamp(0.0, 1.0)


def adaptive_x0_loss(x0_prediction: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """mean((x0_hat - x0)^2) / sg(max(mean|x0_hat - x0|, 1e-5)) per sample [N] (the source computes the weight
    in float64; here in the inputs' dtype)."""
    dims = tuple(range(1, x0.ndim))
    error = x0_prediction - x0
    weight = error.detach().abs().mean(dim=dims).clamp(min=ADAPTIVE_WEIGHT_FLOOR)  # [N], no gradient
    return error.pow(2).mean(dim=dims) / weight


def nft_loss(
    velocity: torch.Tensor,
    old_velocity: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    t: torch.Tensor,
    probability: torch.Tensor,
    beta: float,
    clip: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DiffusionNFT's policy loss, the mean over N samples, with L+ and L- [N].

    velocity: v_theta [N, C, H, W] (with gradient); old_velocity: v_old (detached here); x_t, x0 [N, C, H, W];
    t [N] the noise levels; probability: r [N]; beta: the mixing of the implicit policies; clip: adv_clip_max."""
    old_velocity = old_velocity.detach()
    t_ = t.reshape(-1, *([1] * (x0.ndim - 1))).to(velocity.dtype)  # [N, 1, 1, 1]
    positive = beta * velocity + (1 - beta) * old_velocity  # v+
    negative = (1 + beta) * old_velocity - beta * velocity  # v-
    positive_loss = adaptive_x0_loss(x_t - t_ * positive, x0)
    negative_loss = adaptive_x0_loss(x_t - t_ * negative, x0)
    policy = clip * (probability * positive_loss + (1 - probability) * negative_loss) / beta  # [N]
    return policy.mean(), positive_loss, negative_loss


@dataclass(frozen=True)
class SoftUpdate:
    """The sampling ("old") policy's soft update after each iteration: old <- d old + (1 - d) theta with
    d = min(rate * optimizer_steps, cap) (DiffusionNFT's ``return_decay``, decay_type 1: rate 0.001, cap 0.5)."""

    rate: float = 0.001
    cap: float = 0.5

    def decay(self, optimizer_steps: int) -> float:
        return min(self.rate * optimizer_steps, self.cap)


@dataclass(frozen=True)
class NFTObjective:
    """DiffusionNFT's loss (module docstring) on one chunk at one fresh noise level per sample.

    Each term's advantage is the credit's at the slot's noise level: GRPO's terminal advantage (the same at every
    level), or with ``forward_credit: vgpo`` TCRM's per-step value advantage; r is computed here from it.
    The slots are the rollout's own noise levels sigma_0 .. sigma_{T-1} (the source trains at the sampler's
    timesteps), a per-sample random subset of int(T * train_step_fraction) of them.
    """

    beta: float = 1.0
    advantage_clip: float = 5.0
    kl_beta: float = 0.0
    train_step_fraction: float = 0.99
    needs_log_probs: bool = False
    needs_rollout_means: bool = False
    stat_names: tuple[str, ...] = ("loss", "policy_loss", "kl", "positive_loss", "negative_loss", "optimality")
    first_step_names: tuple[str, ...] = ()

    def check(self, plan: StepPlan) -> None:
        if self.beta <= 0:
            raise ConfigError(f"algorithm.nft_beta must be > 0 (the loss divides by it), got {self.beta}")
        if self.advantage_clip <= 0:
            raise ConfigError(
                f"DiffusionNFT needs algorithm.advantage_clip > 0 (r = A / (2 c) + 1/2), got {self.advantage_clip}"
            )
        check_forward_levels(plan, self.train_step_fraction)

    def draw_slots(self, plan: StepPlan, total: int, generator: torch.Generator) -> torch.Tensor:
        return forward_process_slots(plan, total, self.train_step_fraction, generator)

    def term(
        self, model: StepModel, batch: UpdateBatch, rows: torch.Tensor, slots: torch.Tensor, on_policy: bool
    ) -> TermLoss:
        x0, _, x_t, t, cond = noised_again(batch, rows, slots)
        with model.old():
            old_velocity = model.velocity(x_t, t, cond)
        reference_velocity = None
        if self.kl_beta > 0:
            with model.reference():
                reference_velocity = model.velocity(x_t, t, cond)
        velocity = model.velocity(x_t, t, cond)
        advantages = slot_advantages(batch, rows, slots).to(velocity.device)  # [m]
        probability = optimality_probability(advantages, self.advantage_clip)
        policy_loss, positive, negative = nft_loss(
            velocity, old_velocity, x_t, x0, t, probability, self.beta, self.advantage_clip
        )
        loss, kl = policy_loss, torch.zeros(())
        if reference_velocity is not None:
            kl = (velocity - reference_velocity).pow(2).mean()  # the source's kl_loss: mean squared velocity gap
            loss = loss + self.kl_beta * kl
        return TermLoss(
            loss=loss,
            stats={
                "loss": loss,
                "policy_loss": policy_loss,
                "kl": kl,
                "positive_loss": positive.mean(),
                "negative_loss": negative.mean(),
                "optimality": probability.mean(),
            },
        )
