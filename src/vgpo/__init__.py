"""vgpo: Value-Anchored Group Policy Optimization (VGPO) and Flow-GRPO for flow-matching text-to-image models.

The paper's equations are importable from the top level (they live in `vgpo.math`).
"""

from vgpo import _moved
from vgpo.math import (
    PolicyLossStats,
    SDEStep,
    adae_advantages,
    clipped_policy_loss,
    discounted_values,
    gaussian_mean_kl,
    grpo_advantages,
    ode_step,
    project_x0,
    sde_step,
    value_weights,
)

_moved.install()  # the old paths of the modules regrouped into folders keep working, with a warning

__version__ = "0.1.0"

__all__ = [
    "PolicyLossStats",
    "SDEStep",
    "__version__",
    "adae_advantages",
    "clipped_policy_loss",
    "discounted_values",
    "gaussian_mean_kl",
    "grpo_advantages",
    "ode_step",
    "project_x0",
    "sde_step",
    "value_weights",
]
