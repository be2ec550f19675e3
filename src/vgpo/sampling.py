"""Sampling from a :class:`~vgpo.policy.FlowPolicy`: SDE rollouts with per-step log-probs (paper Eq. 7) for
training, the ODE sampler for evaluation, and TCRM's one-step projections (Eq. 10) of every visited state.

A rollout makes exactly one velocity call per step (a CFG pair counts as one batched call); the projections
reuse those velocities, so TCRM costs no extra model evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from vgpo.math import ode_step, project_x0
from vgpo.math.sde import SDE_FORMS
from vgpo.policy import Conditioning, FlowPolicy, select_rows


@dataclass
class Rollout:
    """The trajectories of N samples through T steps, in generation order (index 0 is sigma = 1).

    latents: the states x at every noise level [N, T+1, C, H, W]; latents[:, -1] is the final sample.
    velocities: the (guided) velocity the sampler used at each step [N, T, C, H, W].
    log_probs: log p(latents[:, t+1] | latents[:, t]) under the sampling policy [N, T] (zeros for ODE steps).
    sigmas: the schedule [T+1], from 1 to 0.
    step_kinds: what each step was, T entries: "sde" (of form ``sde_form``, with its log-prob) or "ode".
    """

    latents: torch.Tensor
    velocities: torch.Tensor
    log_probs: torch.Tensor
    sigmas: torch.Tensor
    step_kinds: tuple[str, ...] = field(default=())
    sde_form: str = "flow_grpo"
    means: torch.Tensor | None = None
    """The Gaussian means of the SDE steps [N, T, C, H, W] (zeros at ODE steps), kept when asked (``keep_means``):
    GRPO-Guard's ratio normalisation compares the policy's mean with the sampler's."""

    @property
    def num_steps(self) -> int:
        return int(self.sigmas.shape[0]) - 1

    @property
    def final(self) -> torch.Tensor:
        """The generated samples [N, C, H, W]."""
        return self.latents[:, -1]


def rollout(
    policy: FlowPolicy,
    cond: Conditioning,
    num_steps: int,
    *,
    noise_level: float = 0.7,
    guidance_scale: float = 1.0,
    generator: torch.Generator | None = None,
    initial_noise: torch.Tensor | None = None,
    sde: bool = True,
    sde_noise: torch.Tensor | None = None,
    on_projection: Callable[[int, torch.Tensor], None] | None = None,
    step_kinds: Sequence[str] | None = None,
    sde_form: str = "flow_grpo",
    keep_means: bool = False,
) -> Rollout:
    """Run the sampler from noise to data, recording what the policy update needs.

    cond has N rows (one per sample; repeat a prompt's row for its group). ``initial_noise`` [N, C, H, W]
    (e.g. shared within a group, as Algorithm 1 does) is drawn from ``generator`` when not given. With
    ``sde`` every step is the stochastic step of Eq. 7 with its log-prob; otherwise the Euler ODE step.
    ``sde_noise`` [N, T, C, H, W] gives each SDE step's standard normal eps (drawn from ``generator`` when not
    given), so that a caller can derive every sample's noise from the sample alone, e.g. whatever process holds it.

    ``on_projection(t, x0_hat)`` receives TCRM's projection [N, C, H, W] of the state after step t (the rows of
    :func:`step_projections` for step t, bitwise) as soon as it exists: right after step t+1's velocity, before
    step t+1's own update, so a caller can score it while the sampler goes on. Steps arrive in order 0..T-1;
    the last one (sigma = 0) is the final sample, after the loop.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    kinds = tuple(step_kinds) if step_kinds is not None else ("sde" if sde else "ode",) * num_steps
    if len(kinds) != num_steps or not set(kinds) <= {"sde", "ode"}:
        raise ValueError(f"step_kinds must be {num_steps} entries of 'sde' or 'ode', got {kinds}")
    if sde_form not in SDE_FORMS:
        raise ValueError(f"unknown sde_form {sde_form!r}; choose from {', '.join(SDE_FORMS)}")
    stochastic_step = SDE_FORMS[sde_form]
    rows = next(iter(cond.values())).shape[0]
    sigmas = policy.sigma_schedule(num_steps)
    if initial_noise is None:
        initial_noise = torch.randn((rows, *policy.latent_shape), generator=generator)
    x = initial_noise.to(policy.device, torch.float32)
    latents = [x]
    velocities = []
    log_probs = []
    means = []
    with torch.no_grad():
        for step in range(num_steps):
            sigma, sigma_next = float(sigmas[step]), float(sigmas[step + 1])
            sigma_batch = torch.full((rows,), sigma, device=policy.device)
            v = policy.velocity(x, sigma_batch, cond, guidance_scale).float()
            if on_projection is not None and step > 0:
                # the state after step-1 is x at sigma; its projection needs this velocity (Eq. 10)
                on_projection(step - 1, project_x0(x, v, sigmas[step : step + 1].to(x.device).repeat(rows)))
            if kinds[step] == "sde":
                # eps is drawn on the generator's device (CPU by default), so seeds mean the same on any device
                noise = sde_noise[:, step] if sde_noise is not None else torch.randn(x.shape, generator=generator)
                step_result = stochastic_step(x, v, sigma, sigma_next, noise_level, noise=noise)
                x_next, log_prob = step_result.next_sample, step_result.log_prob
                if keep_means:
                    means.append(step_result.mean)
            else:
                x_next = ode_step(x, v, sigma, sigma_next)
                log_prob = torch.zeros(rows, device=policy.device)
                if keep_means:
                    means.append(torch.zeros_like(x_next))
            velocities.append(v)
            log_probs.append(log_prob)
            latents.append(x_next)
            x = x_next
        if on_projection is not None:  # after the last step sigma = 0: the projection is the sample itself
            last_sigma = sigmas[num_steps : num_steps + 1].to(x.device).repeat(rows)
            on_projection(num_steps - 1, project_x0(x, torch.zeros_like(x), last_sigma))
    return Rollout(
        latents=torch.stack(latents, dim=1),
        velocities=torch.stack(velocities, dim=1),
        log_probs=torch.stack(log_probs, dim=1),
        sigmas=sigmas,
        step_kinds=kinds,
        sde_form=sde_form,
        means=torch.stack(means, dim=1) if keep_means else None,
    )


def step_projections(result: Rollout) -> torch.Tensor:
    """TCRM's projected terminal states after every step (paper Eq. 9-10), [N, T, C, H, W].

    After step t the state is s_{t+1} = latents[:, t+1] at sigma_{t+1}; its projection is
    x0_hat = s - sigma_{t+1} * v(s, sigma_{t+1}), where v(s, sigma_{t+1}) is the velocity the sampler computed
    at step t+1 (no new model call). After the last step sigma = 0 and x0_hat is the final sample itself.

    We use the schedule's sigma (shift included) where the paper writes tau = t / T; the two agree for an
    unshifted linear schedule, and the schedule's sigma is the noise level the state actually has.
    """
    states = result.latents[:, 1:]  # [N, T, C, H, W]: the state reached by each step
    next_velocities = torch.cat(
        [result.velocities[:, 1:], torch.zeros_like(result.velocities[:, :1])], dim=1
    )  # [N, T, ...]; the last state (sigma = 0) needs none
    n, steps = states.shape[:2]
    sigma_after = result.sigmas[1:].to(states.device).repeat(n)  # [N*T], row-major like the flatten below
    projected = project_x0(states.flatten(0, 1), next_velocities.flatten(0, 1), sigma_after)
    return projected.reshape(n, steps, *states.shape[2:])


def generate(
    policy: FlowPolicy,
    prompts: Sequence[str],
    *,
    num_steps: int = 40,
    seed: int = 0,
    sde: bool = False,
    noise_level: float = 0.7,
    guidance_scale: float = 1.0,
    batch_size: int = 64,
) -> torch.Tensor:
    """Images [len(prompts), 3, H, W] in [0, 1] for the prompts, seeded and repeatable (ODE by default).

    Sample i's initial noise depends on (seed, i) only, so results do not depend on ``batch_size``.
    """
    unique = list(dict.fromkeys(prompts))
    cond_unique = policy.encode_prompts(unique)
    row_of = {prompt: i for i, prompt in enumerate(unique)}
    images = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        index = torch.tensor([row_of[p] for p in chunk])
        noise = torch.stack(
            [
                torch.randn(policy.latent_shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + start + i))
                for i in range(len(chunk))
            ]
        )
        generator = torch.Generator().manual_seed(seed * 7919 + start)
        result = rollout(
            policy,
            select_rows(cond_unique, index),
            num_steps,
            noise_level=noise_level,
            guidance_scale=guidance_scale,
            generator=generator,
            initial_noise=noise,
            sde=sde,
        )
        images.append(policy.decode(result.final))
    return torch.cat(images, dim=0)
