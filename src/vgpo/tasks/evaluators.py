"""Evaluators: ``(images, prompts, metadata) -> metrics``, registered by name like the rewards.

An evaluator scores images [N, 3, H, W] float in [0, 1] of held-out prompts and returns a flat dict of floats.
Every evaluator reports ``"score"``, the mean of its task's own reward over the images, so that evaluation
need not call the same reward model a second time; most also report ``"accuracy"`` (a strict per-image
verdict) and ``"accuracy/<category>"``.
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from vgpo.errors import ConfigError


class Evaluator(Protocol):
    """Task metrics of images [N, 3, H, W] in [0, 1] for their N prompts and metadata dicts."""

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> dict[str, float]: ...


EvaluatorFactory = Callable[..., Evaluator]
_REGISTRY: dict[str, EvaluatorFactory] = {}


def register_evaluator(name: str) -> Callable[[EvaluatorFactory], EvaluatorFactory]:
    """Decorator registering ``factory(**options) -> Evaluator`` under ``name`` (names must be unique)."""

    def decorator(factory: EvaluatorFactory) -> EvaluatorFactory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ConfigError(f"evaluator {name!r} is registered twice; give the second evaluator another name")
        _REGISTRY[name] = factory
        return factory

    return decorator


def evaluator_names() -> list[str]:
    """The registered evaluator names, sorted."""
    return sorted(_REGISTRY)


def build_evaluator(name: str, options: Mapping[str, Any] | None = None) -> Evaluator:
    """The evaluator called ``name``; ``options`` are the task's reward options for the reward of the same name
    (model folders and the like): those the factory names are passed, the reward's own knobs are not."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown evaluator {name!r}; known evaluators: {', '.join(evaluator_names())}")
    factory = _REGISTRY[name]
    named = evaluator_parameters(name)
    return factory(**{key: value for key, value in (options or {}).items() if key in named})


def evaluator_parameters(name: str) -> set[str]:
    """The options the evaluator ``name``'s factory takes (those it shares with the reward of the same name)."""
    if name not in _REGISTRY:
        return set()
    return {
        parameter.name
        for parameter in inspect.signature(_REGISTRY[name]).parameters.values()
        if parameter.kind is not inspect.Parameter.VAR_KEYWORD
    }


def summarise_accuracy(passed: Sequence[bool], scores: Sequence[float], categories: Sequence[str]) -> dict[str, float]:
    """``accuracy`` (mean strict pass), ``accuracy/<category>`` and ``score`` (mean graded score)."""
    if not passed:
        return {"accuracy": float("nan"), "score": float("nan")}
    by_category: dict[str, list[bool]] = defaultdict(list)
    for ok, category in zip(passed, categories, strict=True):
        by_category[category].append(bool(ok))
    result = {"accuracy": float(np.mean(passed)), "score": float(np.mean(scores))}
    for category in sorted(by_category):
        result[f"accuracy/{category}"] = float(np.mean(by_category[category]))
    return result


def _categories(metadata: list[dict]) -> list[str]:
    return [str(meta.get("category", "all")) for meta in metadata]


@register_evaluator("compositional")
def make_compositional_evaluator(**_: Any) -> Evaluator:
    """The scene checker's strict pass ("accuracy", per category) and graded score ("score")."""
    from vgpo.rewards.compositional import require_scene_specs
    from vgpo.scoring.scenes import check_images

    def evaluate(images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> dict[str, float]:
        require_scene_specs(prompts, metadata, who="evaluator 'compositional'")
        passed, scores = check_images(images, metadata)
        return summarise_accuracy(passed, scores, _categories(metadata))

    return evaluate


@register_evaluator("ocr")
def make_ocr_evaluator(**_: Any) -> Evaluator:
    """Exact reading ("accuracy": case and spaces ignored, per category) and the mean OCR reward ("score")."""
    from vgpo.rewards.ocr import ocr_targets
    from vgpo.scoring.images import images_to_uint8
    from vgpo.scoring.ocr import get_engine, normalise_text, text_score

    def evaluate(images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> dict[str, float]:
        targets = ocr_targets(prompts, metadata)
        readings = get_engine().read(list(images_to_uint8(images)))
        passed = [normalise_text(r) == normalise_text(t) for r, t in zip(readings, targets, strict=True)]
        scores = [text_score(r, t) for r, t in zip(readings, targets, strict=True)]
        return summarise_accuracy(passed, scores, _categories(metadata))

    return evaluate


@register_evaluator("geneval")
def make_geneval_evaluator(
    detector: str | None = None,
    clip: str | None = None,
    device: str = "auto",
    partial: str = "baseline",
    **_: Any,
) -> Evaluator:
    """GenEval's strict verdict per image ("accuracy", "accuracy/<tag>"), GenEval's overall score ("geneval":
    the mean of the per-tag accuracies) and the mean partial credit ("score", the training reward's mean, in the
    reward's ``partial`` form)."""
    from vgpo.rewards.geneval import DEFAULT_CLIP, DEFAULT_DETECTOR, GenevalScorer

    scorer = GenevalScorer(detector or DEFAULT_DETECTOR, clip or DEFAULT_CLIP, device, partial)

    def evaluate(images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> dict[str, float]:
        strict, partial = scorer.score(images, prompts, metadata)
        metrics = summarise_accuracy(strict, partial, _categories(metadata))
        tags = [value for key, value in metrics.items() if key.startswith("accuracy/")]
        metrics["geneval"] = float(np.mean(tags)) if tags else float("nan")
        return metrics

    return evaluate


@register_evaluator("pickscore")
def make_pickscore_evaluator(
    model: str | None = None, processor: str | None = None, device: str = "auto", dtype: str = "fp32", **_: Any
) -> Evaluator:
    """The raw PickScore (logit_scale x cosine, "pickscore", as the paper's table) and the training reward's
    mean ("score": the raw score / 26, the baseline's scaling)."""
    from vgpo.rewards.pickscore import PICKSCORE_DIVISOR, pickscore

    reward = pickscore(model=model, processor=processor, device=device, dtype=dtype, raw=True)

    def evaluate(images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> dict[str, float]:
        raw = reward(images, prompts, metadata)
        return {"pickscore": float(raw.mean()), "score": float(raw.mean()) / PICKSCORE_DIVISOR}

    return evaluate
