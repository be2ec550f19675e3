"""The PPO-clipped objective with KL to the reference (paper Eq. 5-6, Flow-GRPO's), on one micro-batch at one
trained step per sample, with two options from the methods that followed:
    ratio_norm   GRPO-Guard's normalised log-ratio and 1 / dt step re-weighting (`vgpo.math.normalised_log_ratio`)
    noise_aware  TempFlow-GRPO's noise-aware weights: each term times scale x the step's transition std
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vgpo.errors import ConfigError
from vgpo.math import clipped_policy_loss, gaussian_mean_kl, normalised_log_ratio
from vgpo.methods.objectives import StepModel, TermLoss, UpdateBatch, trained_step_slots
from vgpo.methods.samplers import StepPlan
from vgpo.policy import select_rows


@dataclass(frozen=True)
class ClippedPolicyObjective:
    """minimise  mean( max(-A r, -A clip(r, 1 - eps, 1 + eps)) ) + beta * KL(pi_theta || pi_ref)   (Eq. 5-6).

    Old log-probs. Until the iteration's first optimizer step the policy IS the sampling policy, so the old log-prob
    of those terms is this very computation, detached: the ratio is exactly 1 in any precision. The rollout's own
    log-probs come from other batch shapes (all N samples at one step, under no_grad), whose kernels differ by ~1e-4
    in bf16, more than the 1e-4 clip range. The later optimizer steps compare against the rollout's log-probs, and
    ``rollout_log_prob_gap`` logs the size of that kernel mismatch, measured on the first step's terms.
    """

    clip_range: float = 1e-4
    advantage_clip: float | None = 5.0
    kl_beta: float = 0.0
    train_step_fraction: float = 0.99
    ratio_norm: bool = False
    """GRPO-Guard (arXiv 2510.22319; Flow-GRPO's ``train_sd3_GRPO_Guard.py``): log r_hat = s log r + ||dmu||^2 / (2 s),
    s the transition std and dmu the policy's mean minus the sampler's, and each term divided by dt = sigma -
    sigma_next, which makes the gradient's scale the same at every step."""
    noise_aware_scale: float | None = None
    """TempFlow-GRPO (Shredded-Pork/TempFlow-GRPO, ``train_sd3_pr.py``: ``-2.25 * std_dev_t * A * ratio``): each
    term weighs by this scale x the step's transition std (the source's 2.25); None: off."""
    needs_log_probs: bool = True
    stat_names: tuple[str, ...] = ("loss", "policy_loss", "kl", "clip_fraction", "approx_kl", "ratio")
    first_step_names: tuple[str, ...] = ("first_ratio_error", "rollout_log_prob_gap")

    @property
    def needs_rollout_means(self) -> bool:
        return self.ratio_norm

    def check(self, plan: StepPlan) -> None:
        if not plan.trained:
            raise ConfigError(
                "the PPO objective trains SDE steps by their log-prob, and this sampler takes ODE steps only; "
                "use a sampler with SDE steps or a forward-process objective (algorithm.method=nft or awm)"
            )
        if plan.subsample and int(len(plan.trained) * self.train_step_fraction) < 1:
            raise ConfigError(
                f"algorithm.train_step_fraction={self.train_step_fraction} trains int({len(plan.trained)} x "
                f"{self.train_step_fraction}) = 0 of the {len(plan.trained)} trainable steps; raise it (1.0 trains "
                "every step of a window)"
            )

    def draw_slots(self, plan: StepPlan, total: int, generator: torch.Generator) -> torch.Tensor:
        return trained_step_slots(plan, total, self.train_step_fraction, generator)

    def term(
        self, model: StepModel, batch: UpdateBatch, rows: torch.Tensor, slots: torch.Tensor, on_policy: bool
    ) -> TermLoss:
        result = batch.rollout
        t = slots  # [m] the step each sample of the chunk trains
        index = rows.to(result.latents.device)
        x = result.latents[index, t]
        x_next = result.latents[index, t + 1]
        sigma, sigma_next = batch.sigmas[t], batch.sigmas[t + 1]
        cond = select_rows(batch.cond, rows)
        step = model.transition(x, x_next, sigma, sigma_next, cond)
        log_prob, mean, std = step.log_prob, step.mean, step.std
        rollout_log_prob = result.log_probs[index, t].to(log_prob.device)
        old_log_prob = log_prob.detach() if on_policy else rollout_log_prob
        advantages = batch.advantages[index, t].to(log_prob.device)
        log_ratio, weights = None, None
        if self.ratio_norm:
            if result.means is None:
                raise ValueError("GRPO-Guard's ratio normalisation needs the rollout's means (keep_means)")
            old_mean = mean.detach() if on_policy else result.means[index, t].to(mean.device)
            log_ratio = normalised_log_ratio(log_prob, old_log_prob, mean, old_mean, std)
            weights = 1.0 / (sigma - sigma_next).to(log_prob.dtype)  # GRPO-Guard's division of each step by dt
        if self.noise_aware_scale is not None:
            noise_weights = self.noise_aware_scale * std.to(log_prob.dtype)
            weights = noise_weights if weights is None else weights * noise_weights
        policy_loss, stats = clipped_policy_loss(
            log_prob,
            old_log_prob,
            advantages,
            self.clip_range,
            self.advantage_clip,
            log_ratio=log_ratio,
            term_weights=weights,
        )
        loss = policy_loss
        kl = torch.zeros(())
        if self.kl_beta > 0:
            with model.reference():
                reference_mean = model.transition(x, x_next, sigma, sigma_next, cond).mean
            kl = gaussian_mean_kl(mean, reference_mean, std).mean()
            loss = loss + self.kl_beta * kl
        first_step = {}
        if on_policy:
            first_step = {
                "first_ratio_error": float((log_prob.detach() - old_log_prob).exp().sub(1).abs().max()),
                "rollout_log_prob_gap": float((log_prob.detach() - rollout_log_prob).abs().max()),
            }
        return TermLoss(
            loss=loss,
            stats={
                "loss": loss,
                "policy_loss": policy_loss,
                "kl": kl,
                "clip_fraction": stats.clip_fraction,
                "approx_kl": stats.approx_kl,
                "ratio": stats.ratio_mean,
            },
            first_step=first_step,
        )
