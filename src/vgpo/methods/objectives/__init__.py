"""Objectives: the loss and statistics of one micro-batch. Everything around them (the sample and step order,
accumulation, the gradient all-reduce, FSDP padding, the optimizer step, the statistics' reduction) is the one
driver every objective shares (`vgpo.methods.driver`), so a new objective is one new file in this folder.

An objective draws, per sample, the K "slots" it trains (a likelihood objective: K of the sampler's trained
steps; a forward-process objective: K fresh noise levels), and computes the loss of a chunk of samples at one slot.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

import torch

from vgpo.errors import ConfigError
from vgpo.math.sde import SDE_FORMS, SDEStep
from vgpo.methods.samplers import StepPlan
from vgpo.policy import Conditioning, FlowPolicy, select_rows
from vgpo.sampling import Rollout
from vgpo.train_state import EMA


@dataclass(frozen=True)
class UpdateBatch:
    """This process's share of an iteration, as every objective sees it: rows [offset, offset + N_local) of the
    global batch of N = ``total`` samples, whole groups.

    rollout: the local samples' trajectories; cond: their conditioning (N_local rows); advantages: the credit's
    per-step signal [N_local, T]; plan: what the sampler did at each step; sigmas: the schedule [T + 1] on the
    policy's device.
    """

    rollout: Rollout
    cond: Conditioning
    advantages: torch.Tensor
    plan: StepPlan
    sigmas: torch.Tensor
    offset: int
    total: int


@dataclass
class TermLoss:
    """The loss of one (chunk, slot) term and its statistics.

    loss: a scalar with gradient, the mean over the chunk's samples. stats: scalars averaged over the iteration's
    terms, weighted by samples (logged under their names). first_step: scalars whose maximum over the terms of the
    iteration's first optimizer step is logged (e.g. how far the first ratio is from 1).
    """

    loss: torch.Tensor
    stats: dict[str, torch.Tensor | float]
    first_step: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StepModel:
    """The policy as an objective calls it: its velocity and its stochastic step's log-prob at the sampler's
    settings (guidance, noise level, SDE form), the frozen reference policy, and the sampling ("old") policy when
    the method keeps one (``old_weights``: DiffusionNFT's soft-updated copy of the trainable weights)."""

    policy: FlowPolicy
    guidance_scale: float
    noise_level: float
    sde_form: str
    old_weights: EMA | None = None

    def velocity(self, latents: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """v(x, sigma) [N, ...] in float32; gradients flow to the trainable parameters when enabled."""
        return self.policy.velocity(latents, sigma, cond, self.guidance_scale).float()

    def transition(
        self, latents: torch.Tensor, next_latents: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, cond
    ) -> SDEStep:
        """The policy's SDE step from ``latents`` scored at the stored ``next_latents`` (log-prob, mean, std)."""
        velocity = self.velocity(latents, sigma, cond)
        step = SDE_FORMS[self.sde_form]
        return step(latents, velocity, sigma, sigma_next, self.noise_level, prev_sample=next_latents)

    @contextmanager
    def reference(self) -> Iterator[None]:
        """No gradient, and the frozen reference policy (LoRA off, or the initial weights)."""
        with torch.no_grad(), self.policy.reference():
            yield

    @contextmanager
    def old(self) -> Iterator[None]:
        """No gradient, and the sampling policy's weights (the trained ones when the method keeps no copy).
        Call it before the term's forward with gradient: it swaps the trainable weights in place."""
        weights = self.old_weights.applied() if self.old_weights is not None else nullcontext()
        with torch.no_grad(), weights:
            yield


class Objective(Protocol):
    """The loss of a method on one micro-batch."""

    @property
    def needs_log_probs(self) -> bool:
        """True for likelihood objectives (trained steps must be SDE steps); False for forward-process ones."""
        ...

    @property
    def needs_rollout_means(self) -> bool:
        """Whether the rollout must keep its SDE steps' means (`Rollout.means`)."""
        ...

    @property
    def stat_names(self) -> tuple[str, ...]:
        """The names of :attr:`TermLoss.stats`, the same for every term (every process reduces them all)."""
        ...

    @property
    def first_step_names(self) -> tuple[str, ...]:
        """The names of :attr:`TermLoss.first_step`."""
        ...

    def check(self, plan: StepPlan) -> None:
        """Raise ConfigError when this objective cannot train on rollouts planned so."""
        ...

    def draw_slots(self, plan: StepPlan, total: int, generator: torch.Generator) -> torch.Tensor:
        """The slots [N, K] each of the N global samples trains in one pass (drawn from ``generator`` only)."""
        ...

    def term(
        self, model: StepModel, batch: UpdateBatch, rows: torch.Tensor, slots: torch.Tensor, on_policy: bool
    ) -> TermLoss:
        """The loss of local samples ``rows`` [m] at their slots [m]. ``on_policy``: the policy has not moved since
        the rollout (the iteration's first optimizer step)."""
        ...


def trained_step_slots(plan: StepPlan, total: int, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Each sample's own random subset of int(len(trained) * fraction) of the plan's trained steps [N, K], as the
    baseline draws them (a per-sample permutation, its first K); every trained step, in a random order per sample,
    when the plan does not subsample (a window). With every step trained this is the baseline's
    ``randperm(T)[:int(T * fraction)]``, draw for draw."""
    trained = torch.tensor(plan.trained, dtype=torch.long)
    count = int(len(trained) * fraction) if plan.subsample else len(trained)
    order = torch.stack([torch.randperm(len(trained), generator=generator) for _ in range(total)])[:, :count]
    return trained[order]


def forward_process_slots(plan: StepPlan, total: int, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Slots of a forward-process objective [N, K]: per sample a random subset of K = int(T * fraction) of the
    rollout's noise levels sigma_0 .. sigma_{T-1} (a per-sample permutation, its first K, as DiffusionNFT draws its
    timesteps), each with its own noise seed, packed in one integer: slot = step + T * seed (:func:`noised_again`
    unpacks it). Drawn from ``generator`` alone, over the global batch, so every process draws the same noise."""
    steps = plan.num_steps
    count = int(steps * fraction)
    order = torch.stack([torch.randperm(steps, generator=generator) for _ in range(total)])[:, :count]  # [N, K]
    seeds = torch.randint(0, 2**31 - 1, (total, count), generator=generator)  # [N, K]
    return order + steps * seeds


def check_forward_levels(plan: StepPlan, fraction: float) -> None:
    """Refuse a ``train_step_fraction`` that trains no noise level of a forward-process objective."""
    if int(plan.num_steps * fraction) < 1:
        raise ConfigError(
            f"algorithm.train_step_fraction={fraction} trains int({plan.num_steps} x {fraction}) = 0 noise levels "
            "per sample; raise it"
        )


def slot_advantages(batch: UpdateBatch, rows: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """[m] the credit's advantage of local ``rows`` at their slots' noise levels (GRPO's: the same at every level;
    VGPO's: the level's rollout step's)."""
    step = (slots % batch.plan.num_steps).to(batch.advantages.device)
    return batch.advantages[rows.to(batch.advantages.device), step]


def noised_again(
    batch: UpdateBatch, rows: torch.Tensor, slots: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Conditioning]:
    """The final samples of local ``rows`` [m] noised again by the forward process at their ``slots`` [m]
    (:func:`forward_process_slots`): x_t = (1 - t) x0 + t eps, t = sigma_step, eps ~ N(0, I) from the slot's seed.

    Returns x0, eps, x_t [m, C, H, W], t [m] and the rows' conditioning."""
    steps = batch.plan.num_steps
    step, seed = slots % steps, slots // steps
    x0 = batch.rollout.latents[rows.to(batch.rollout.latents.device), -1]  # [m, C, H, W] the final samples
    t = batch.sigmas[step.to(batch.sigmas.device)].to(x0.device, x0.dtype)  # [m]
    eps = torch.stack([torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(int(s))) for s in seed]).to(
        x0.device, x0.dtype
    )  # [m, C, H, W]
    t_ = t.reshape(-1, *([1] * (x0.ndim - 1)))
    return x0, eps, (1 - t_) * x0 + t_ * eps, t, select_rows(batch.cond, rows)
