"""The Flow-GRPO SDE sampler step with its log-probability (paper Eq. 7) and the one-step ODE projection (Eq. 10).

Time convention: sigma = 1 is noise, sigma = 0 is data; a step goes from ``sigma`` to ``sigma_next < sigma``,
so dt = sigma_next - sigma is negative.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch

Reduction = Literal["mean", "sum", "none"]


class SDEStep(NamedTuple):
    """Result of one SDE step for N samples.

    next_sample: x_{sigma_next} [N, ...] (drawn, or the ``prev_sample`` that was scored).
    log_prob: log p(next_sample | sample) [N] reduced over non-batch dims ([N, ...] with reduction "none").
    mean: the Gaussian transition mean [N, ...].
    std: the transition standard deviation std_t * sqrt(-dt), [N] (one value per sample).
    """

    next_sample: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def _per_sample(value: float | torch.Tensor, batch: int, like: torch.Tensor) -> torch.Tensor:
    """A float or [N] tensor as a [N, 1, 1, ...] tensor broadcastable against ``like`` [N, ...]."""
    tensor = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if tensor.ndim == 0:
        tensor = tensor.expand(batch)
    if tensor.shape != (batch,):
        raise ValueError(f"expected a float or a tensor of shape [{batch}], got shape {tuple(tensor.shape)}")
    return tensor.reshape(batch, *([1] * (like.ndim - 1)))


def _reduce(values: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "none":
        return values
    dims = tuple(range(1, values.ndim))
    if reduction == "mean":
        return values.mean(dim=dims)
    if reduction == "sum":
        return values.sum(dim=dims)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def sde_step(
    sample: torch.Tensor,
    velocity: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    noise_level: float,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    reduction: Reduction = "mean",
    noise: torch.Tensor | None = None,
) -> SDEStep:
    """One step of the marginal-preserving SDE of Flow-GRPO (paper Eq. 7) and its Gaussian log-density.

    With a = ``noise_level`` and dt = sigma_next - sigma < 0::

        std_t = a * sqrt(sigma / (1 - sigma))
        mean  = x + [v + std_t^2 / (2 sigma) * (x + (1 - sigma) v)] * dt
              = x * (1 + std_t^2 / (2 sigma) * dt) + v * (1 + std_t^2 (1 - sigma) / (2 sigma)) * dt
        next  = mean + std_t * sqrt(-dt) * eps,        eps ~ N(0, I)

    Choices, as the baseline makes them:
    - At sigma = 1 the std is infinite; the (1 - sigma) under the square root is replaced by
      (1 - sigma_next). At sigma = 1 the step is the schedule's first, so sigma_next is the schedule's
      sigma_1: exactly the baseline's replacement.
    - The computation runs in float32 at least (bf16 overflows in std_t^2 / sigma); outputs keep that dtype.
    - The per-element log-density is reduced over all non-batch dims by ``reduction`` ("mean" by default,
      like the baseline; "sum" gives the true joint log-density; "none" keeps the elements).

    Args:
        sample: x_sigma [N, ...].
        velocity: the model's v(x_sigma, sigma) [N, ...].
        sigma, sigma_next: floats or [N] tensors with 0 <= sigma_next < sigma <= 1.
        noise_level: a > 0. (a -> 0 gives the Euler ODE step; use :func:`ode_step` for a = 0.)
        prev_sample: if given, score this transition instead of drawing one (for the PPO ratio).
        generator: RNG for eps when drawing.
        noise: eps [N, ...] to use instead of drawing (e.g. drawn on the CPU for device-independent seeds).
    """
    _check_noise_level(noise_level)
    x, v, sigma_t, sigma_n = _prepare(sample, velocity, sigma, sigma_next)
    dt = sigma_n - sigma_t
    one_minus_sigma = torch.where(sigma_t >= 1, 1 - sigma_n, 1 - sigma_t)
    std_t = noise_level * torch.sqrt(sigma_t / one_minus_sigma)
    return _marginal_preserving_step(x, v, sigma_t, dt, std_t, prev_sample, noise, generator, reduction)


def constant_noise_sde_step(
    sample: torch.Tensor,
    velocity: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    noise_level: float,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    reduction: Reduction = "mean",
    noise: torch.Tensor | None = None,
) -> SDEStep:
    """DanceGRPO's SDE step: the drift of Eq. 7 with a constant diffusion std_t = eta (= ``noise_level``).

    Source: DanceGRPO (XueZeyue/DanceGRPO, ``flux_step`` with ``sde_solver=True``): with x0_hat = x - sigma v, the
    score estimate -(x - (1 - sigma) x0_hat) / sigma^2 = -(x + (1 - sigma) v) / sigma, and
        mean = x + dt * v - 0.5 * eta^2 * score * dt = x + [v + eta^2 / (2 sigma) * (x + (1 - sigma) v)] * dt,
        std  = eta * sqrt(-dt),
    i.e. :func:`sde_step`'s mean and std with std_t = eta instead of a * sqrt(sigma / (1 - sigma)). Same arguments
    and outputs as :func:`sde_step`; finite at sigma = 1, so no replacement is needed there.
    """
    _check_noise_level(noise_level)
    x, v, sigma_t, sigma_n = _prepare(sample, velocity, sigma, sigma_next)
    std_t = torch.full_like(sigma_t, noise_level)
    return _marginal_preserving_step(x, v, sigma_t, sigma_n - sigma_t, std_t, prev_sample, noise, generator, reduction)


def cps_step(
    sample: torch.Tensor,
    velocity: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    noise_level: float,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    reduction: Reduction = "mean",
    noise: torch.Tensor | None = None,
) -> SDEStep:
    """Coefficients-preserving sampling (CPS, arXiv 2509.05952): a stochastic step whose sample keeps the forward
    process's coefficients, x_next = (1 - sigma_next) x0_hat + sigma_next * (mixed noise).

    Source: the Flow-GRPO repository's ``sde_type == "cps"`` step (``sde_step_with_logprob``)::

        std      = sigma_next * sin(eta * pi / 2)                    (eta = ``noise_level``, in (0, 1])
        x0_hat   = x - sigma * v                                     (the data estimate, Eq. 10)
        x1_hat   = x + (1 - sigma) * v                               (the noise estimate)
        mean     = (1 - sigma_next) * x0_hat + sqrt(sigma_next^2 - std^2) * x1_hat
        next     = mean + std * eps

    The noise and the noise estimate are independent unit-variance parts, so the total noise coefficient stays
    sigma_next. Where the source drops the Gaussian's normalisation (it uses -(next - mean)^2 as the log-prob,
    which leaves the PPO ratio's scale off by 1 / (2 std^2)), vgpo keeps the true Gaussian log-density, like
    :func:`sde_step`; the ratio at the sampling policy is exactly 1 either way. At the last step (sigma_next = 0)
    the std is 0: the step is deterministic and has no log-prob, so a sampler must take an ODE step there.
    """
    if not 0 < noise_level <= 1:
        raise ValueError(
            f"CPS needs 0 < noise_level <= 1 (std = sigma_next * sin(noise_level * pi / 2)), got {noise_level}"
        )
    x, v, sigma_t, sigma_n = _prepare(sample, velocity, sigma, sigma_next)
    if torch.any(sigma_n <= 0):
        raise ValueError("a CPS step needs sigma_next > 0 (its std is sigma_next * sin(...)); take an ODE step to 0")
    std = sigma_n * math.sin(noise_level * math.pi / 2)  # [N, 1, ...]
    data_estimate = x - sigma_t * v
    noise_estimate = x + (1 - sigma_t) * v
    mean = (1 - sigma_n) * data_estimate + torch.sqrt(sigma_n**2 - std**2) * noise_estimate
    return _gaussian_step(x, mean, std, prev_sample, noise, generator, reduction)


def _check_noise_level(noise_level: float) -> None:
    if noise_level <= 0:
        raise ValueError(
            f"noise_level must be > 0 for a stochastic step with a log-prob, got {noise_level}; "
            "use ode_step for the deterministic sampler"
        )


def _prepare(
    sample: torch.Tensor, velocity: torch.Tensor, sigma: float | torch.Tensor, sigma_next: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x and v in float32 at least (bf16 overflows in std_t^2 / sigma), sigma and sigma_next as [N, 1, ...]."""
    dtype = torch.promote_types(sample.dtype, torch.float32)
    x = sample.to(dtype)
    v = velocity.to(dtype)
    batch = x.shape[0]
    sigma_t = _per_sample(sigma, batch, x)
    sigma_n = _per_sample(sigma_next, batch, x)
    if torch.any(sigma_n >= sigma_t) or torch.any(sigma_t > 1) or torch.any(sigma_n < 0):
        raise ValueError("an SDE step needs 0 <= sigma_next < sigma <= 1 (generation runs from sigma=1 to sigma=0)")
    return x, v, sigma_t, sigma_n


def _marginal_preserving_step(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma_t: torch.Tensor,
    dt: torch.Tensor,
    std_t: torch.Tensor,
    prev_sample: torch.Tensor | None,
    noise: torch.Tensor | None,
    generator: torch.Generator | None,
    reduction: Reduction,
) -> SDEStep:
    """The Euler-Maruyama step of the reverse SDE with diffusion std_t that keeps the flow's marginals (Eq. 7)."""
    mean = x * (1 + std_t**2 / (2 * sigma_t) * dt) + v * (1 + std_t**2 * (1 - sigma_t) / (2 * sigma_t)) * dt
    std = std_t * torch.sqrt(-dt)  # [N, 1, ...]
    return _gaussian_step(x, mean, std, prev_sample, noise, generator, reduction)


def _gaussian_step(
    x: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    prev_sample: torch.Tensor | None,
    noise: torch.Tensor | None,
    generator: torch.Generator | None,
    reduction: Reduction,
) -> SDEStep:
    """Draw (or take ``prev_sample`` as) the next sample of N(mean, std^2) and its log-density."""
    batch = x.shape[0]
    dtype = x.dtype
    if prev_sample is None:
        if noise is None:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=dtype)
        next_sample = mean + std * noise.to(x.device, dtype)
    else:
        next_sample = prev_sample.to(dtype)

    # Gaussian log-density; the sample is treated as data (no gradient through it), as in PPO.
    log_density = -((next_sample.detach() - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return SDEStep(next_sample, _reduce(log_density, reduction), mean, std.reshape(batch))


def ode_step(
    sample: torch.Tensor,
    velocity: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
) -> torch.Tensor:
    """The deterministic Euler step of the probability-flow ODE: x + v * (sigma_next - sigma)."""
    dtype = torch.promote_types(sample.dtype, torch.float32)
    x = sample.to(dtype)
    batch = x.shape[0]
    dt = _per_sample(sigma_next, batch, x) - _per_sample(sigma, batch, x)
    return x + velocity.to(dtype) * dt


def project_x0(sample: torch.Tensor, velocity: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """One-step ODE projection to data (paper Eq. 10): x0_hat = x_sigma - sigma * v(x_sigma, sigma).

    Exact on a straight path x_sigma = (1 - sigma) x0 + sigma x1 with v = x1 - x0. At sigma = 0 it returns
    the sample itself. sample, velocity [N, ...]; sigma a float or [N].
    """
    dtype = torch.promote_types(sample.dtype, torch.float32)
    x = sample.to(dtype)
    return x - _per_sample(sigma, x.shape[0], x) * velocity.to(dtype)


SDE_FORMS = {"flow_grpo": sde_step, "dance": constant_noise_sde_step, "cps": cps_step}
"""The stochastic steps a sampler can take, by name (``algorithm.sde_form``); each has :func:`sde_step`'s arguments."""
