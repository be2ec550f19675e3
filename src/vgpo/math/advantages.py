"""Group-relative advantages: GRPO (paper Eq. 4 / Eq. 13) and VGPO's Adaptive Dual Advantage (Eq. 14).

Statistics are taken over the G samples of one prompt (a group, named by ``group_ids``) and, for per-step
inputs [N, T], separately at every step. Standard deviations are population ones (ddof = 0), like the
baseline's ``np.std``.
"""

from __future__ import annotations

from typing import Literal

import torch

DEFAULT_STD_EPS = 1e-4  # the baseline adds 1e-4 to the std; it also tames near-zero stds


def group_statistics(values: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group mean, std and "all equal" flag, broadcast back to every row.

    values [N, T]; group_ids [N] (any integer labels). Returns three [N, T] tensors.
    """
    if group_ids.ndim != 1 or group_ids.shape[0] != values.shape[0]:
        raise ValueError(f"group_ids must be [N] = [{values.shape[0]}], got shape {tuple(group_ids.shape)}")
    _, inverse = torch.unique(group_ids.to(values.device), return_inverse=True)  # [N] in 0..B-1
    num_groups = int(inverse.max()) + 1
    steps = values.shape[1]
    index = inverse[:, None].expand(-1, steps)  # [N, T]
    counts = torch.zeros(num_groups, steps, dtype=values.dtype, device=values.device)
    counts.scatter_add_(0, index, torch.ones_like(values))
    sums = torch.zeros_like(counts).scatter_add_(0, index, values)
    mean = (sums / counts).gather(0, index)  # [N, T]
    squares = torch.zeros_like(counts).scatter_add_(0, index, (values - mean) ** 2)
    std = (squares / counts).sqrt().gather(0, index)
    # "All equal" is decided exactly (max == min), not from the std: the mean of equal floats can differ
    # from them by an ulp, and dividing that residue by an equally tiny std would invent an advantage.
    high = torch.full_like(counts, -torch.inf).scatter_reduce(0, index, values, "amax")
    low = torch.full_like(counts, torch.inf).scatter_reduce(0, index, values, "amin")
    equal = (high == low).gather(0, index)
    return mean, std, equal


def _as_matrix(values: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if values.ndim == 1:
        return values[:, None], True
    if values.ndim == 2:
        return values, False
    raise ValueError(f"expected [N] or [N, T], got shape {tuple(values.shape)}")


def _relative(
    values: torch.Tensor, group_ids: torch.Tensor, std_scope: Literal["group", "global"], eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(values - group mean) / (std + eps), exactly 0 for a group whose values are all equal. Also the std."""
    mean, std, equal = group_statistics(values, group_ids)
    if std_scope == "global":
        std = values.std(dim=0, unbiased=False, keepdim=True).expand_as(values)
    elif std_scope != "group":
        raise ValueError(f"std_scope must be 'group' or 'global', got {std_scope!r}")
    relative = torch.where(equal, torch.zeros_like(values), (values - mean) / (std + eps))
    return relative, std


def grpo_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    std_scope: Literal["group", "global"] = "group",
    eps: float = DEFAULT_STD_EPS,
) -> torch.Tensor:
    """Group-relative advantages (paper Eq. 4): A = (r - mean_group(r)) / std_group(r).

    rewards: [N] terminal rewards, or [N, T] per-step values (Eq. 13, statistics per step).
    group_ids: [N] prompt index of each sample. ``std_scope="global"`` divides by the std of the whole batch
    (the baseline's global-std option) while still centring per group. ``eps`` is added to the std, as the
    baseline does. A group whose rewards are all equal gets exactly 0, never NaN.
    Returns the same shape as ``rewards``.
    """
    matrix, was_vector = _as_matrix(rewards)
    relative, _ = _relative(matrix, group_ids, std_scope, eps)
    return relative[:, 0] if was_vector else relative


def adae_advantages(
    values: torch.Tensor,
    group_ids: torch.Tensor,
    k: float,
    weights: torch.Tensor | None = None,
    absolute_steps: int | None = None,
    eps: float = DEFAULT_STD_EPS,
) -> torch.Tensor:
    """Adaptive Dual Advantage Estimation (paper Eq. 14), per step across each group.

        A = omega * ((1 + alpha) Q - mean_group(Q)) / std_group(Q),   alpha = k * std_group(Q)
          = omega * ((Q - mean) / std + k * Q)

    The second, algebraically equal form is what we compute: its absolute term k * Q does not go through
    the division, so when a group's values are all equal (std = 0) the advantage is omega * k * Q, the limit
    of paper Appendix B, instead of 0 or NaN. The relative term uses the same ``eps`` and exact-equality rule
    as :func:`grpo_advantages`, so k = 0 without weights is exactly GRPO per step.

    Args:
        values: Q [N, T] (or [N] for a single step).
        group_ids: [N] prompt index of each sample.
        k: scale of the absolute term (the paper tunes it per reward; k = 0 disables it).
        weights: omega [N, T] from :func:`vgpo.math.value_weights`; None means 1.
        absolute_steps: keep the absolute term on the first ``m`` steps in generation order only (the paper's
            Appendix A.2 uses 5 of 10); None keeps it on every step.
    Returns A with the shape of ``values``.
    """
    matrix, was_vector = _as_matrix(values)
    relative, _ = _relative(matrix, group_ids, "group", eps)
    absolute = k * matrix
    if absolute_steps is not None:
        if absolute_steps < 0:
            raise ValueError(f"absolute_steps must be >= 0, got {absolute_steps}")
        step = torch.arange(matrix.shape[1], device=matrix.device)
        absolute = torch.where(step[None, :] < absolute_steps, absolute, torch.zeros_like(absolute))
    advantages = relative + absolute
    if weights is not None:
        if weights.shape != values.shape:
            raise ValueError(f"weights must match values {tuple(values.shape)}, got {tuple(weights.shape)}")
        advantages = advantages * (weights[:, None] if was_vector else weights)
    return advantages[:, 0] if was_vector else advantages
