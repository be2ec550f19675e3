"""The paper's equations as small pure functions on tensors (torch only; no models, no configs).

Every function cites its equation in "Anchoring Values in Temporal and Group Dimensions for Flow Matching
Model Alignment" (VGPO) or the Flow-GRPO baseline it builds on. Shapes follow the legend in `vgpo.policy`.
"""

from vgpo.math.advantages import adae_advantages, grpo_advantages
from vgpo.math.losses import PolicyLossStats, clipped_policy_loss, gaussian_mean_kl, normalised_log_ratio
from vgpo.math.sde import SDEStep, ode_step, project_x0, sde_step
from vgpo.math.values import (
    calibrate_instant_rewards,
    calibrated_instant_rewards,
    calibration_slopes,
    discounted_values,
    value_weights,
)

__all__ = [
    "PolicyLossStats",
    "SDEStep",
    "adae_advantages",
    "calibrate_instant_rewards",
    "calibrated_instant_rewards",
    "calibration_slopes",
    "clipped_policy_loss",
    "discounted_values",
    "gaussian_mean_kl",
    "grpo_advantages",
    "normalised_log_ratio",
    "ode_step",
    "project_x0",
    "sde_step",
    "value_weights",
]
