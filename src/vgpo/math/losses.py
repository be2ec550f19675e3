"""The PPO-clipped policy objective of Flow-GRPO / VGPO (paper Eq. 5-6) and the KL term to the reference."""

from __future__ import annotations

from typing import NamedTuple

import torch


class PolicyLossStats(NamedTuple):
    """Diagnostics of one loss evaluation (detached scalars).

    clip_fraction: share of entries whose ratio left [1 - eps, 1 + eps].
    approx_kl: 0.5 * mean((log_prob - old_log_prob)^2), the baseline's estimate of KL(old || new).
    ratio_mean: mean importance ratio (1 on the first update after sampling).
    """

    clip_fraction: torch.Tensor
    approx_kl: torch.Tensor
    ratio_mean: torch.Tensor


def clipped_policy_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
    advantage_clip: float | None = 5.0,
    log_ratio: torch.Tensor | None = None,
    term_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, PolicyLossStats]:
    """The PPO-clipped surrogate (paper Eq. 5, ratio of Eq. 6) as a loss to minimise.

        r = exp(log_prob - old_log_prob)
        loss = mean( max( -A * r, -A * clip(r, 1 - clip_range, 1 + clip_range) ) )

    i.e. minus Eq. 5's min(r A, clip(r) A), averaged over samples and steps (its 1/G and 1/T); at r = 1 the
    loss is -mean(A). Advantages are first clipped to [-advantage_clip, advantage_clip] like the baseline
    (None disables). All inputs share one shape ([N] for one step, or [N, T]). The KL term is separate
    (:func:`gaussian_mean_kl`), so that w/ and w/o KL are one flag.

    ``log_ratio`` replaces log_prob - old_log_prob (GRPO-Guard's normalised one, :func:`normalised_log_ratio`);
    ``term_weights`` (same shape) multiplies each term before the mean (TempFlow-GRPO's noise-aware weights,
    GRPO-Guard's 1 / dt). Without them the loss is the one above, bit for bit.
    """
    if not (log_prob.shape == old_log_prob.shape == advantages.shape):
        raise ValueError(
            f"log_prob {tuple(log_prob.shape)}, old_log_prob {tuple(old_log_prob.shape)} and advantages "
            f"{tuple(advantages.shape)} must have one shape"
        )
    if clip_range <= 0:
        raise ValueError(f"clip_range must be > 0, got {clip_range}")
    if advantage_clip is not None:
        advantages = advantages.clamp(-advantage_clip, advantage_clip)
    if log_ratio is None:
        log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    terms = torch.maximum(unclipped, clipped)
    loss = (terms * term_weights).mean() if term_weights is not None else terms.mean()
    with torch.no_grad():
        stats = PolicyLossStats(
            clip_fraction=((ratio - 1.0).abs() > clip_range).float().mean(),
            approx_kl=0.5 * (log_ratio**2).mean(),
            ratio_mean=ratio.mean(),
        )
    return loss, stats


def gaussian_mean_kl(mean: torch.Tensor, reference_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL between two Gaussian SDE steps that share their std, as the baseline uses it (paper Eq. 5's D_KL).

        KL(N(mu, s^2) || N(mu_ref, s^2)) = ||mu - mu_ref||^2 / (2 s^2)   per element,

    averaged over the non-batch elements (the baseline's mean reduction). mean, reference_mean [N, ...];
    std [N] (the transition std from :func:`vgpo.math.sde_step`). Returns [N].
    """
    if mean.shape != reference_mean.shape:
        raise ValueError(f"mean {tuple(mean.shape)} and reference_mean {tuple(reference_mean.shape)} differ")
    squared = (mean - reference_mean) ** 2
    per_sample = squared.reshape(squared.shape[0], -1).mean(dim=1)
    return per_sample / (2 * std.reshape(-1).to(per_sample.dtype) ** 2)


def normalised_log_ratio(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    mean: torch.Tensor,
    old_mean: torch.Tensor,
    std: torch.Tensor,
) -> torch.Tensor:
    """GRPO-Guard's RatioNorm (arXiv 2510.22319): the per-step log-ratio with its mean bias removed and its scale
    made step-independent.

    Source: the Flow-GRPO repository's ``scripts/train_sd3_GRPO_Guard.py``::

        log r_hat = s * (log r + mean ||mu_theta - mu_old||^2 / (2 s^2)),      s = the transition std

    With x' = mu_old + s eps this is mean(eps * (mu_theta - mu_old)): the negative bias -||dmu||^2 / (2 s^2) of a
    Gaussian log-ratio is removed, and so is its 1 / s scale, which made low-noise steps' ratios leave the clip
    range first. log_prob, old_log_prob [N] (mean-reduced log-densities); mean, old_mean [N, ...]; std [N].
    """
    squared = ((mean - old_mean) ** 2).reshape(mean.shape[0], -1).mean(dim=1)
    s = std.reshape(-1).to(log_prob.dtype)
    return s * (log_prob - old_log_prob + squared / (2 * s**2))
