"""The methods by name: each is a sampler, a credit and an objective, with its source (docs/algorithms.md).

    method          sampler                                  credit          objective
    flow_grpo       every step SDE (Eq. 7)                   GRPO            PPO clip + KL
    vgpo            every step SDE                           TCRM + ADAE     PPO clip + KL
    tcrm_only       every step SDE                           TCRM            PPO clip + KL
    adae_only       every step SDE                           ADAE            PPO clip + KL
    flow_grpo_fast  SDE on a random window, ODE elsewhere    GRPO            PPO clip + KL
    mixgrpo         SDE on a sliding window, ODE elsewhere   GRPO            PPO clip + KL
    dance_grpo      every step DanceGRPO's SDE               GRPO            PPO clip + KL
    flow_grpo_cps   every step CPS                           GRPO            PPO clip + KL
    grpo_guard      every step SDE                           GRPO            PPO, normalised ratio, 1/dt weights
    tempflow_grpo   one SDE branch step, ODE before / after  GRPO            PPO, noise-aware weights
    stepwise_grpo   every step SDE                           per-step gains  PPO clip + KL
    vgpo_fast       SDE on a random window                   TCRM + ADAE     PPO clip + KL
    vgpo_mix        SDE on a sliding window                  TCRM + ADAE     PPO clip + KL
    nft             every step ODE, by the old policy        GRPO (or VGPO)  DiffusionNFT (forward process)
    awm             every step ODE                           GRPO (or VGPO)  AWM (forward process)

Adding a method is one entry here (and its name in `vgpo.config.Method`); the trainer never names one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vgpo.errors import ConfigError
from vgpo.methods.credit import ADAE, TCRM, Credit, GroupRelative, StepwiseGains, VGPOCredit
from vgpo.methods.objectives import Objective
from vgpo.methods.objectives.awm import AWMObjective
from vgpo.methods.objectives.nft import NFTObjective, SoftUpdate
from vgpo.methods.objectives.ppo import ClippedPolicyObjective
from vgpo.methods.samplers import (
    FullSDESampler,
    ODESampler,
    RandomWindowSampler,
    Sampler,
    SlidingWindowSampler,
)

if TYPE_CHECKING:
    from vgpo.config import AlgorithmConfig


@dataclass(frozen=True)
class MethodParts:
    """A method, built from its settings: what the trainer asks for sampling, credit and the update."""

    name: str
    sampler: Sampler
    credit: Credit
    objective: Objective
    shared_prefix: bool = False
    """The group must share its initial noise (TempFlow-GRPO branches a shared ODE prefix)."""
    sampling_policy: SoftUpdate | None = None
    """Rollouts come from a copy of the trainable weights that follows the trained ones by this soft update after
    each iteration (DiffusionNFT's old policy); None: from the trained weights themselves."""


@dataclass(frozen=True)
class MethodSpec:
    """How one named method is put together; ``forms`` lists the SDE forms it accepts, its own first."""

    source: str
    sampler: Callable[[AlgorithmConfig, int, str], Sampler]
    credit: Callable[[AlgorithmConfig], Credit]
    objective: Callable[[AlgorithmConfig], Objective] = lambda a: _ppo(a)
    forms: tuple[str, ...] = ("flow_grpo", "dance", "cps")
    shared_prefix: bool = False
    sampling_policy: SoftUpdate | None = None


def _ppo(a: AlgorithmConfig, **options: object) -> ClippedPolicyObjective:
    settings: dict[str, object] = {"train_step_fraction": a.train_step_fraction, **options}
    return ClippedPolicyObjective(
        clip_range=a.clip_range,
        advantage_clip=a.advantage_clip,
        kl_beta=a.kl_beta,
        **settings,  # type: ignore[arg-type]
    )


def _full(a: AlgorithmConfig, num_steps: int, form: str) -> Sampler:
    return FullSDESampler(form)


def _dance(a: AlgorithmConfig, num_steps: int, form: str) -> Sampler:
    # DanceGRPO drops the last step from the trainable ones, then trains a random fraction of the rest per sample
    return FullSDESampler(form, train_last_step=False)


DEFAULT_TRAIN_STEP_FRACTION = 0.99
"""`AlgorithmConfig.train_step_fraction`'s default (the baseline's timestep_fraction)."""


def _window(a: AlgorithmConfig, size: int, low: int, high: int) -> tuple[int, tuple[int, int]]:
    if a.train_step_fraction != DEFAULT_TRAIN_STEP_FRACTION:  # the window is what these methods train, as sourced
        warnings.warn(
            f"algorithm.train_step_fraction={a.train_step_fraction} is ignored by algorithm.method={a.method}: a "
            "window method trains every step of its SDE window, as its source does; set algorithm.window_size to "
            "train fewer steps",
            stacklevel=3,
        )
    return (a.window_size if a.window_size is not None else size), (a.window_range or (low, high))


def _fast(a: AlgorithmConfig, num_steps: int, form: str) -> Sampler:
    # Flow-GRPO-Fast: sde_window_range (0, T // 2) in the repository's fast configs
    size, window_range = _window(a, 2, 0, max(num_steps // 2, 1))
    return RandomWindowSampler(size, window_range, form)


def _branch(a: AlgorithmConfig, num_steps: int, form: str) -> Sampler:
    # TempFlow-GRPO: one branch step; its source branches at every step but the last ([0, T - 1))
    size, window_range = _window(a, 1, 0, max(num_steps - 1, 1))
    return RandomWindowSampler(size, window_range, form)


def _mix(a: AlgorithmConfig, num_steps: int, form: str) -> Sampler:
    # MixGRPO: max_timesteps = sampling_steps - 2, the window never reaches the last two steps
    size, window_range = _window(a, 2, 0, max(num_steps - 2, 1))
    return SlidingWindowSampler(size, a.window_stride, a.window_every, window_range, form)


def _ode(a: AlgorithmConfig, num_steps: int, form: str) -> Sampler:
    return ODESampler(form)


def _forward_credit(a: AlgorithmConfig) -> Credit:
    return _vgpo(a) if a.forward_credit == "vgpo" else _grpo(a)


def _forward_clip(a: AlgorithmConfig) -> float:
    if a.advantage_clip is None:
        raise ConfigError(
            f"algorithm.method={a.method} scales its advantages by algorithm.advantage_clip (the sources' 5); "
            "set it to a positive number"
        )
    return a.advantage_clip


def _grpo(a: AlgorithmConfig) -> Credit:
    return GroupRelative(a.std_scope)


def _vgpo(a: AlgorithmConfig) -> Credit:
    return VGPOCredit(a.gamma, a.k, a.absolute_steps, a.instant_reward == "calibrated", a.std_scope)


METHOD_SPECS: dict[str, MethodSpec] = {
    "flow_grpo": MethodSpec("Flow-GRPO (arXiv 2505.05470), the paper's baseline", _full, _grpo),
    "vgpo": MethodSpec("VGPO, the paper (TCRM Eq. 9-12 + ADAE Eq. 14)", _full, _vgpo),
    "tcrm_only": MethodSpec(
        "the paper's ablation: TCRM without ADAE",
        _full,
        lambda a: TCRM(a.gamma, a.std_scope, a.instant_reward == "calibrated"),
    ),
    "adae_only": MethodSpec(
        "the paper's ablation: ADAE on the terminal reward", _full, lambda a: ADAE(a.k, a.absolute_steps, a.std_scope)
    ),
    "flow_grpo_fast": MethodSpec("Flow-GRPO-Fast (Flow-GRPO repository, sde_window_size / range)", _fast, _grpo),
    "mixgrpo": MethodSpec("MixGRPO (arXiv 2507.21802, Tencent-Hunyuan/MixGRPO)", _mix, _grpo),
    "dance_grpo": MethodSpec("DanceGRPO (arXiv 2505.07818, XueZeyue/DanceGRPO)", _dance, _grpo, forms=("dance",)),
    "flow_grpo_cps": MethodSpec("Coefficients-preserving sampling (arXiv 2509.05952)", _full, _grpo, forms=("cps",)),
    "grpo_guard": MethodSpec(
        "GRPO-Guard (arXiv 2510.22319; Flow-GRPO's train_sd3_GRPO_Guard.py)",
        _full,
        _grpo,
        objective=lambda a: _ppo(a, ratio_norm=True),
        # its 1 / dt re-weighting equalises steps whose std grows as sqrt(dt) (Eq. 7 and DanceGRPO's); CPS's does not
        forms=("flow_grpo", "dance"),
    ),
    "tempflow_grpo": MethodSpec(
        "TempFlow-GRPO (arXiv 2508.04324, Shredded-Pork/TempFlow-GRPO)",
        _branch,
        _grpo,
        objective=lambda a: _ppo(a, noise_aware_scale=2.25),
        shared_prefix=True,
    ),
    "stepwise_grpo": MethodSpec(
        "Stepwise-Flow-GRPO (arXiv 2603.28718): per-step gains of x0-projection rewards",
        _full,
        lambda a: StepwiseGains(a.std_scope),
    ),
    "vgpo_fast": MethodSpec("VGPO's credit on Flow-GRPO-Fast's window (vgpo's own combination)", _fast, _vgpo),
    "vgpo_mix": MethodSpec("VGPO's credit on MixGRPO's sliding window (vgpo's own combination)", _mix, _vgpo),
    "nft": MethodSpec(
        "DiffusionNFT (arXiv 2509.16117, NVlabs/DiffusionNFT scripts/train_nft_sd3.py)",
        _ode,
        _forward_credit,
        objective=lambda a: NFTObjective(a.nft_beta, _forward_clip(a), a.kl_beta, a.train_step_fraction),
        sampling_policy=SoftUpdate(),
    ),
    "awm": MethodSpec(
        "Advantage Weighted Matching (arXiv 2509.25050, scxue/advantage_weighted_matching train_sd3_awm.py)",
        _ode,
        _forward_credit,
        objective=lambda a: AWMObjective(
            _forward_clip(a), a.kl_beta, a.awm_weighting, a.train_step_fraction, ghuber_power=a.awm_ghuber_power
        ),
    ),
}


def required_settings(method: str) -> dict[str, object]:
    """Settings a method cannot run without, as ``section.key`` overrides (`vgpo study` adds them to its jobs)."""
    spec = METHOD_SPECS.get(method)
    return {"sampling.share_initial_noise": False} if spec is not None and spec.sampler is _ode else {}


def required_overrides(method: str) -> list[str]:
    """:func:`required_settings` as command-line overrides (``section.key=value``)."""
    return [f"{key}={str(value).lower()}" for key, value in required_settings(method).items()]


DANCE_SOURCE_ETA = 0.3
"""DanceGRPO's eta in its scripts (``XueZeyue/DanceGRPO``, the FLUX and HunyuanVideo GRPO scripts)."""


def build_method(
    algorithm: AlgorithmConfig, num_steps: int, share_initial_noise: bool = True, noise_level: float | None = None
) -> MethodParts:
    """The method ``algorithm.method`` with its settings; ConfigError for a combination that cannot work.
    ``noise_level`` (``sampling.noise_level``) is only read to warn where it is far from a method's source."""
    name = algorithm.method
    if name not in METHOD_SPECS:
        raise ConfigError(f"unknown algorithm.method {name!r}; choose from {', '.join(METHOD_SPECS)}")
    spec = METHOD_SPECS[name]
    form = algorithm.sde_form or spec.forms[0]
    if form not in spec.forms:
        raise ConfigError(
            f"algorithm.method={name} takes the SDE form(s) {', '.join(spec.forms)}, not algorithm.sde_form={form}"
        )
    if spec.sampler is _ode and share_initial_noise:
        raise ConfigError(
            f"algorithm.method={name} samples by the ODE, whose final sample is a function of its initial noise: a "
            "group sharing one x_T gives G copies of one image and no reward spread to learn from; set "
            "sampling.share_initial_noise: false (vgpo study does so for this method)"
        )
    if spec.shared_prefix and not share_initial_noise:
        raise ConfigError(
            f"algorithm.method={name} branches a group from one shared ODE prefix: it needs "
            "sampling.share_initial_noise: true"
        )
    if form == "dance" and noise_level is not None and noise_level != DANCE_SOURCE_ETA:
        warnings.warn(
            f"sampling.noise_level={noise_level} with DanceGRPO's constant-noise SDE: its scripts use eta "
            f"{DANCE_SOURCE_ETA}. The presets' 0.7 is Flow-GRPO's a, whose noise shrinks with sigma; DanceGRPO's "
            f"does not, so the same number injects far more noise at the last steps (on the embedded text task its "
            f"rollouts score 0.13 at 0.7 and 0.83 at 0.3, docs/results.md). Set sampling.noise_level="
            f"{DANCE_SOURCE_ETA} for the source's recipe",
            stacklevel=2,
        )
    sampler = spec.sampler(algorithm, num_steps, form)
    sampler.check(num_steps)
    if algorithm.forward_credit != "grpo" and spec.sampler is not _ode:
        raise ConfigError(
            f"algorithm.forward_credit={algorithm.forward_credit} applies to the forward-process methods (nft, awm); "
            f"algorithm.method={name} takes its credit from its name (vgpo, tcrm_only, ...)"
        )
    parts = MethodParts(
        name,
        sampler,
        spec.credit(algorithm),
        spec.objective(algorithm),
        spec.shared_prefix,
        spec.sampling_policy,
    )
    parts.objective.check(sampler.plan(num_steps, 0, 1))
    return parts
