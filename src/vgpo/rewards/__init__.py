"""Rewards as plain callables ``(images, prompts, metadata) -> scores``, registered by name, combined by weights.

A reward takes images [N, 3, H, W] float in [0, 1], the N prompts and their N metadata dicts, and returns
scores [N] float32 on CPU. Factories are registered with :func:`register_reward`; :func:`build_reward` turns a
spec (``"ocr"`` or ``{"compositional": 1.0, "ocr": 0.5}``) into one callable, and :func:`checked_call` is how
the trainer calls a reward: it rejects a wrong count or a non-finite score with a message that names the reward.

Built-in rewards: ``compositional`` (graded checker of the procedural scenes, `vgpo.rewards.compositional`)
``ocr`` (the baseline's OCR rule with PP-OCRv5 through ONNX, `vgpo.rewards.ocr`), ``geneval`` (GenEval's checks
with Mask2Former and CLIP, `vgpo.rewards.geneval`) and ``pickscore`` (the PickScore CLIP preference model from
local weights, `vgpo.rewards.pickscore`). The paper's quality suite
(docs/rewards.md): ``aesthetic`` (LAION aesthetic predictor, `vgpo.rewards.aesthetic`), ``imagereward``
(BLIP-based ImageReward, `vgpo.rewards.imagereward`), ``unifiedreward`` and ``deqa`` (VLM judges
behind an OpenAI-compatible chat server, `vgpo.rewards.vlm_judge`); ``remote`` (any reward served by
`vgpo serve-reward`, `vgpo.rewards.remote`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch

from vgpo.errors import ConfigError, RewardError


class RewardFn(Protocol):
    """A reward model: images [N, 3, H, W] float in [0, 1] -> scores [N] float32 on CPU (higher is better)."""

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor: ...


RewardFactory = Callable[..., RewardFn]
_REGISTRY: dict[str, RewardFactory] = {}


def register_reward(name: str) -> Callable[[RewardFactory], RewardFactory]:
    """Decorator registering ``factory(**kwargs) -> RewardFn`` under ``name`` (names must be unique).

    :func:`build_reward` passes its shared keyword arguments to every factory of a weighted spec, so a factory
    should accept and ignore those it does not know (``**_``); per-reward ``options`` must be named parameters.
    """

    def decorator(factory: RewardFactory) -> RewardFactory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ConfigError(
                f"reward {name!r} is registered twice; give the second reward another name "
                f"(registered: {', '.join(reward_names())})"
            )
        _REGISTRY[name] = factory
        return factory

    return decorator


def reward_names() -> list[str]:
    """The registered reward names, sorted."""
    return sorted(_REGISTRY)


def _factory(name: str) -> RewardFactory:
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown reward {name!r}; known rewards: {', '.join(reward_names())}. "
            "Fix the reward name in the config, or register the reward with @register_reward"
        )
    return _REGISTRY[name]


class WeightedSum:
    """sum_k weight_k * reward_k(images, ...), each component checked (see :func:`checked_call`).

    ``last_components`` keeps the most recent unweighted scores of every component, so the trainer can log
    them separately (multi-reward balancing is easier to diagnose that way).
    """

    def __init__(self, rewards: Mapping[str, RewardFn], weights: Mapping[str, float]) -> None:
        self.rewards = dict(rewards)
        self.weights = dict(weights)
        self.last_components: dict[str, torch.Tensor] = {}
        self.name = " + ".join(f"{self.weights[n]:g} * {n}" for n in self.rewards)

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
        total = torch.zeros(images.shape[0], dtype=torch.float32)
        for name, reward in self.rewards.items():
            scores = checked_call(reward, images, prompts, metadata, name=name)
            self.last_components[name] = scores
            total += self.weights[name] * scores
        return total


def _make(name: str, kwargs: Mapping[str, Any], options: Mapping[str, Any]) -> RewardFn:
    """Call the factory of ``name`` with the shared ``kwargs`` and its own ``options`` (which must be parameters
    the factory names: a misspelt option is an error, not silently ignored)."""
    factory = _factory(name)
    named = {
        parameter.name
        for parameter in inspect.signature(factory).parameters.values()
        if parameter.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    }
    unknown = sorted(set(options) - named)
    if unknown:
        raise ConfigError(
            f"reward {name!r} has no option(s) {', '.join(unknown)}; its options: {', '.join(sorted(named)) or 'none'}. "
            "Fix task.reward_options in the config"
        )
    return factory(**{**kwargs, **options})


def build_reward(
    spec: str | Mapping[str, float], options: Mapping[str, Mapping[str, Any]] | None = None, **kwargs: Any
) -> RewardFn:
    """A reward from a name or a ``{name: weight}`` mapping (the weighted sum of the named rewards).

    ``options`` maps a reward name to keyword arguments for that reward's factory alone (a config's
    ``task.reward_options``, e.g. ``{"pickscore": {"model": "/models/PickScore_v1"}}``); ``kwargs`` go to every
    factory of the spec (e.g. ``build_reward("ocr", drop_score=0.3)``). A single name returns that reward
    itself; a mapping returns a :class:`WeightedSum`.
    """
    options = dict(options or {})
    names = [spec] if isinstance(spec, str) else [str(name) for name in spec] if isinstance(spec, Mapping) else []
    stray = sorted(set(options) - set(names))
    if stray and names:
        raise ConfigError(
            f"reward options given for {', '.join(stray)}, which the reward spec {spec!r} does not use; "
            "fix task.reward_options or task.reward (an override task.reward_options=null clears them)"
        )
    if isinstance(spec, str):
        return _make(spec, kwargs, options.get(spec, {}))
    if not isinstance(spec, Mapping) or not spec:
        raise ConfigError(
            f"reward spec must be a reward name or a non-empty mapping of names to weights, got {spec!r}; "
            f"e.g. 'compositional' or {{'compositional': 1.0, 'ocr': 0.5}}"
        )
    weights: dict[str, float] = {}
    for name, weight in spec.items():
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight != weight:
            raise ConfigError(f"weight of reward {name!r} must be a number, got {weight!r}; fix the reward spec")
        weights[str(name)] = float(weight)
    rewards = {name: _make(name, kwargs, options.get(name, {})) for name in weights}
    return WeightedSum(rewards, weights)


def checked_call(
    reward: RewardFn,
    images: torch.Tensor,
    prompts: list[str],
    metadata: list[dict],
    name: str | None = None,
) -> torch.Tensor:
    """Call ``reward`` and validate its scores: a float32 CPU tensor of shape [N], all finite. Videos
    [N, F, 3, H, W] are scored as the mean of their frames' scores (:class:`vgpo.rewards.video.FrameAveraged`).

    Raises :class:`~vgpo.errors.RewardError` naming the reward, the count it returned (or the indices of the
    non-finite scores) and what to fix.
    """
    label = name or getattr(reward, "name", None) or type(reward).__name__
    count = images.shape[0]
    if len(prompts) != count or len(metadata) != count:
        raise RewardError(
            f"reward {label!r} was given {count} images but {len(prompts)} prompts and {len(metadata)} metadata "
            "entries; pass one prompt and one metadata dict per image"
        )
    if images.dim() == 5:
        from vgpo.rewards.video import FrameAveraged

        reward = FrameAveraged(reward)
    scores = reward(images, prompts, metadata)
    if not isinstance(scores, torch.Tensor):
        scores = torch.as_tensor(scores)
    scores = scores.detach().to("cpu", torch.float32)
    if scores.shape != (count,):
        raise RewardError(
            f"reward {label!r} returned scores of shape {tuple(scores.shape)} for {count} images; "
            f"it must return one score per image, shape [{count}] (flatten or reduce its output)"
        )
    bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
    if bad:
        shown = bad[:20]
        raise RewardError(
            f"reward {label!r} returned {len(bad)} non-finite scores (NaN or inf) at indices {shown}"
            f"{' ...' if len(bad) > len(shown) else ''}; fix the reward so it returns a finite score for "
            "every image (e.g. score blank or unreadable images 0 instead of dividing by zero)"
        )
    return scores


# Built-in rewards register themselves on import (kept last: they import the registry above).
from vgpo.rewards import aesthetic as _aesthetic  # noqa: E402
from vgpo.rewards import compositional as _compositional  # noqa: E402
from vgpo.rewards import geneval as _geneval  # noqa: E402
from vgpo.rewards import imagereward as _imagereward  # noqa: E402
from vgpo.rewards import ocr as _ocr  # noqa: E402
from vgpo.rewards import pickscore as _pickscore  # noqa: E402
from vgpo.rewards import remote as _remote  # noqa: E402
from vgpo.rewards import vlm_judge as _vlm_judge  # noqa: E402

__all__ = [
    "RewardFn",
    "WeightedSum",
    "build_reward",
    "checked_call",
    "register_reward",
    "reward_names",
]
del _compositional, _geneval, _ocr, _pickscore
del _aesthetic, _imagereward, _vlm_judge
del _remote
