"""Samplers: for each of a rollout's T steps, what kind of step it takes (an SDE step of a named form, with its
log-prob, or the deterministic ODE step) and which steps the objective trains.

A sampler is a small object, like a diffusers scheduler: the model gives the sigma schedule (its shift included,
`FlowPolicy.sigma_schedule`), the sampler gives the :class:`StepPlan` of an iteration. Plans that move (a window's
position) draw from (seed, iteration) alone (`vgpo.randomness`), so a resumed run and N processes plan alike.

    full SDE     every step SDE, every step trainable            Flow-GRPO, VGPO, DanceGRPO, CPS, GRPO-Guard
    window       SDE on a window of steps, ODE elsewhere,         Flow-GRPO-Fast (random position), TempFlow-GRPO
                 only the window trained                          (a window of one: the branch step)
    sliding      a window that moves from high to low noise       MixGRPO
                 as training goes on
    ODE          every step ODE, nothing trainable by likelihood  the forward-process objectives (DiffusionNFT, AWM)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from vgpo.errors import ConfigError
from vgpo.math.sde import SDE_FORMS
from vgpo.randomness import iteration_generator

StepKind = Literal["sde", "ode"]
PLAN_STREAM = 4  # the random stream of (seed, iteration) that places windows


@dataclass(frozen=True)
class StepPlan:
    """What one iteration's rollouts do at each step.

    kinds: T entries, "sde" or "ode", in generation order (index 0 starts at sigma = 1).
    trained: the step indices an objective may train (SDE steps only), ascending.
    sde_form: the name of the stochastic step (`vgpo.math.sde.SDE_FORMS`) taken at the SDE steps.
    subsample: whether each sample trains a random fraction of ``trained`` (``algorithm.train_step_fraction``, the
    full-trajectory samplers, as Flow-GRPO and DanceGRPO do) or every one of them (a window, as Flow-GRPO-Fast,
    MixGRPO and TempFlow-GRPO train their window's steps).
    """

    kinds: tuple[StepKind, ...]
    trained: tuple[int, ...]
    sde_form: str = "flow_grpo"
    subsample: bool = True

    @property
    def num_steps(self) -> int:
        return len(self.kinds)

    def trained_mask(self) -> torch.Tensor:
        """[T] bool, True at trained steps."""
        mask = torch.zeros(self.num_steps, dtype=torch.bool)
        mask[list(self.trained)] = True
        return mask


class Sampler(Protocol):
    """Plans the steps of an iteration's rollouts."""

    @property
    def sde_form(self) -> str:
        """The name of the stochastic step taken at SDE steps."""
        ...

    def plan(self, num_steps: int, seed: int, iteration: int) -> StepPlan:
        """The plan of iteration ``iteration`` (1-based) of a run seeded ``seed``, for T = ``num_steps`` steps."""
        ...

    def check(self, num_steps: int) -> None:
        """Raise ConfigError when this sampler cannot plan ``num_steps`` steps (e.g. a window wider than T)."""
        ...


def _check_form(sde_form: str) -> None:
    if sde_form not in SDE_FORMS:
        raise ConfigError(f"unknown algorithm.sde_form {sde_form!r}; choose from {', '.join(SDE_FORMS)}")


def _last_step_ode(kinds: list[StepKind], sde_form: str) -> None:
    """CPS's std is sigma_next * sin(...), zero at the last step (sigma_next = 0): that step is an ODE step."""
    if sde_form == "cps":
        kinds[-1] = "ode"


@dataclass(frozen=True)
class FullSDESampler:
    """Every step stochastic and trainable (Flow-GRPO's sampler; DanceGRPO's and CPS's by ``sde_form``).

    ``train_last_step=False`` leaves the last step out of the trainable ones, as DanceGRPO does (its candidates are
    steps 0..T-2, of which each sample trains a random fraction)."""

    sde_form: str = "flow_grpo"
    train_last_step: bool = True

    def check(self, num_steps: int) -> None:
        _check_form(self.sde_form)
        if not self.train_last_step and num_steps < 2:
            raise ConfigError("a sampler that leaves the last step untrained needs sampling.num_steps >= 2")

    def plan(self, num_steps: int, seed: int, iteration: int) -> StepPlan:
        kinds: list[StepKind] = ["sde"] * num_steps
        _last_step_ode(kinds, self.sde_form)
        last = num_steps if self.train_last_step else num_steps - 1
        return StepPlan(tuple(kinds), tuple(t for t in range(last) if kinds[t] == "sde"), self.sde_form)


def _window_plan(num_steps: int, start: int, size: int, sde_form: str) -> StepPlan:
    kinds: list[StepKind] = ["ode"] * num_steps
    for t in range(start, start + size):
        kinds[t] = "sde"
    _last_step_ode(kinds, sde_form)
    return StepPlan(tuple(kinds), tuple(t for t in range(num_steps) if kinds[t] == "sde"), sde_form, subsample=False)


def _window_bounds(window_range: tuple[int, int] | None, num_steps: int) -> tuple[int, int]:
    low, high = window_range if window_range is not None else (0, num_steps)
    return low, high


@dataclass(frozen=True)
class RandomWindowSampler:
    """SDE on ``size`` consecutive steps at a random position inside ``window_range`` [low, high), ODE elsewhere;
    only the window is trained (Flow-GRPO-Fast; with size 1, TempFlow-GRPO's branch step).

    Source: the Flow-GRPO repository's Flow-GRPO-Fast (``sde_window_size``, ``sde_window_range``): one window per
    iteration, the same for every sample, its start drawn uniformly from [low, high - size]. Here the draw comes
    from (seed, iteration), not from a global RNG, so that resume and N processes repeat it.
    """

    size: int = 2
    window_range: tuple[int, int] | None = None
    sde_form: str = "flow_grpo"

    def check(self, num_steps: int) -> None:
        _check_form(self.sde_form)
        low, high = _window_bounds(self.window_range, num_steps)
        if self.size < 1:
            raise ConfigError(f"algorithm.window_size must be >= 1, got {self.size}")
        if not 0 <= low < high <= num_steps:
            raise ConfigError(
                f"algorithm.window_range [{low}, {high}) must lie inside the {num_steps} sampling steps "
                f"(0 <= low < high <= sampling.num_steps)"
            )
        if high - low < self.size:
            raise ConfigError(
                f"a window of {self.size} steps does not fit in algorithm.window_range [{low}, {high}) of "
                f"{num_steps} steps; lower algorithm.window_size or widen the range"
            )

    def plan(self, num_steps: int, seed: int, iteration: int) -> StepPlan:
        low, high = _window_bounds(self.window_range, num_steps)
        positions = high - low - self.size + 1
        generator = iteration_generator(seed, iteration, PLAN_STREAM)
        start = low + int(torch.randint(positions, (1,), generator=generator))
        return _window_plan(num_steps, start, self.size, self.sde_form)


@dataclass(frozen=True)
class SlidingWindowSampler:
    """MixGRPO's sliding window: SDE on ``size`` steps starting at ``low + stride * ((iteration - 1) // every)``,
    ODE elsewhere, only the window trained; the window moves from high noise to low noise as training goes on and,
    past ``high``, starts again at ``low`` (MixGRPO's progressive strategy restarts its window after the last shift).

    Source: MixGRPO (Tencent-Hunyuan/MixGRPO), ``window_size``, ``window_stride``, ``shift_interval`` (here
    ``every``): the window's left end advances by ``stride`` every ``every`` iterations.
    """

    size: int = 2
    stride: int = 1
    every: int = 5
    window_range: tuple[int, int] | None = None
    sde_form: str = "flow_grpo"

    def check(self, num_steps: int) -> None:
        RandomWindowSampler(self.size, self.window_range, self.sde_form).check(num_steps)
        if self.stride < 1 or self.every < 1:
            raise ConfigError(
                f"algorithm.window_stride ({self.stride}) and algorithm.window_every ({self.every}) must be >= 1"
            )

    def start(self, num_steps: int, iteration: int) -> int:
        """The window's first step at ``iteration`` (1-based)."""
        low, high = _window_bounds(self.window_range, num_steps)
        positions = (high - low - self.size) // self.stride + 1  # the starts low, low + stride, ... that fit
        return low + self.stride * (((iteration - 1) // self.every) % positions)

    def plan(self, num_steps: int, seed: int, iteration: int) -> StepPlan:
        return _window_plan(num_steps, self.start(num_steps, iteration), self.size, self.sde_form)


@dataclass(frozen=True)
class ODESampler:
    """Every step deterministic: rollouts for objectives that need no log-prob (forward-process training)."""

    sde_form: str = "flow_grpo"

    def check(self, num_steps: int) -> None:
        _check_form(self.sde_form)

    def plan(self, num_steps: int, seed: int, iteration: int) -> StepPlan:
        kinds: list[StepKind] = ["ode"] * num_steps
        return StepPlan(tuple(kinds), (), self.sde_form)
