"""Reward "geneval": GenEval's checks with transformers backbones, partial credit (or strict) per image.

The partial credit is by default the baseline reward server's, which can be negative (too many objects), and
"clean" on request (``task.reward_options.geneval.partial``; both in `vgpo.scoring.geneval`).

The detector is a Mask2Former COCO instance model (`Mask2FormerForUniversalSegmentation`, GenEval used
Mask2Former Swin-S through mmdet) and the colour classifier CLIP ViT-L/14 (`CLIPModel`), zero-shot over GenEval's
ten colours on the object's mask composited on grey (#999) and cropped to its box. The rules themselves are
pure functions in `vgpo.scoring.geneval`. Weights are read from a local folder or the Hugging Face cache,
never downloaded.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vgpo.errors import ConfigError, RewardError
from vgpo.models.common import resolve_device
from vgpo.rewards import register_reward
from vgpo.scoring.geneval import (
    COLOR_TEMPLATES,
    COLORS,
    DETECTOR_ALIASES,
    PARTIAL_FORMS,
    THRESHOLD,
    ObjectDetection,
    classes_needing_color,
    partial_score,
    select_detections,
    strict_correct,
)
from vgpo.scoring.images import images_to_uint8

DEFAULT_DETECTOR = "facebook/mask2former-swin-small-coco-instance"
DEFAULT_CLIP = "openai/clip-vit-large-patch14"
_CACHE: dict[tuple[str, str, str], tuple[Any, Any]] = {}
_LOCK = threading.Lock()


def _fix(what: str, name: str, hub_id: str) -> str:
    folder = name if "/" not in name or name.startswith(("/", ".", "~")) else f"/data/{hub_id.split('/')[-1]}"
    return (
        f"the GenEval {what} {name!r} is neither a local folder with config.json nor in the Hugging Face cache; "
        f"weights are never downloaded at run time. Fix: `huggingface-cli download {hub_id} --local-dir {folder}` "
        f"and set task.reward_options.geneval.{'detector' if what == 'detector' else 'clip'}: {folder}"
    )


def check_available(kind: str, name: str) -> None:
    """Raise ConfigError (naming the folder and the download command) unless ``name`` is a local folder with a
    config.json or a hub id whose config.json is in the Hugging Face cache; cheap, so runs fail at startup."""
    hub_id = DEFAULT_DETECTOR if kind == "detector" else DEFAULT_CLIP
    folder = Path(name).expanduser()
    if (folder / "config.json").is_file():
        return
    if not (name.startswith(("/", ".", "~")) or folder.exists()) and name.count("/") == 1:
        from huggingface_hub import try_to_load_from_cache

        try:
            if isinstance(try_to_load_from_cache(name, "config.json"), str):
                return
        except ValueError:  # not a valid repo id
            pass
    raise ConfigError(_fix(kind, name, hub_id))


def load_pretrained(kind: str, name: str, device: torch.device) -> tuple[Any, Any]:
    """(model in eval mode on ``device``, processor) for ``kind`` 'detector' (Mask2Former) or 'clip', from a
    local folder or the HF cache only; cached per process. Raises ConfigError naming the folder and the fix."""
    key = (kind, name, str(device))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        from transformers import AutoImageProcessor, CLIPModel, CLIPProcessor, Mask2FormerForUniversalSegmentation

        hub_id = DEFAULT_DETECTOR if kind == "detector" else DEFAULT_CLIP
        check_available(kind, name)
        try:
            if kind == "detector":
                model: Any = Mask2FormerForUniversalSegmentation.from_pretrained(name, local_files_only=True)
                processor: Any = AutoImageProcessor.from_pretrained(name, local_files_only=True)
            else:
                model = CLIPModel.from_pretrained(name, local_files_only=True)
                processor = CLIPProcessor.from_pretrained(name, local_files_only=True)
        except (OSError, ValueError) as error:
            raise ConfigError(_fix(kind, name, hub_id) + f" ({error.__class__.__name__}: {error})") from error
        model.requires_grad_(False)
        _CACHE[key] = (model.to(device).eval(), processor)
        return _CACHE[key]


class GenevalScorer:
    """Detections of images and GenEval's verdicts; models loaded on first use."""

    def __init__(self, detector: str, clip: str, device: str = "auto", partial: str = "baseline") -> None:
        if partial not in PARTIAL_FORMS:
            raise ConfigError(
                f"task.reward_options.geneval.partial must be one of {', '.join(PARTIAL_FORMS)}, got {partial!r}"
            )
        self.detector_name, self.clip_name, self.partial = detector, clip, partial
        check_available("detector", detector)  # fail at startup, not after the first rollouts
        check_available("clip", clip)
        self.device = resolve_device(device, "geneval device")
        self._text_classifiers: dict[str, torch.Tensor] = {}

    def _labels(self, model: Any) -> dict[int, str]:
        """Detector label id -> GenEval class name."""
        reverse = {coco: geneval for geneval, coco in DETECTOR_ALIASES.items()}
        return {int(i): reverse.get(str(label), str(label)) for i, label in model.config.id2label.items()}

    @torch.no_grad()
    def detect(self, image: np.ndarray, min_score: float = THRESHOLD) -> list[tuple[ObjectDetection, np.ndarray]]:
        """Instances of one uint8 image [H, W, 3] scoring above ``min_score`` (GenEval's lowest threshold, 0.3;
        the rules raise it for counting): (detection, boolean mask [H, W])."""
        model, processor = load_pretrained("detector", self.detector_name, self.device)
        inputs = processor(images=[image], return_tensors="pt").to(self.device)
        outputs = model(**inputs)
        height, width = image.shape[:2]
        result = processor.post_process_instance_segmentation(
            outputs, threshold=min_score, target_sizes=[(height, width)], return_binary_maps=True
        )[0]
        labels = self._labels(model)
        found = []
        masks = result["segmentation"]
        for index, info in enumerate(result["segments_info"]):
            mask = masks[index].cpu().numpy().astype(bool) if masks is not None and masks.ndim == 3 else None
            if mask is None or not mask.any():
                continue
            rows, cols = np.nonzero(mask)
            box = (float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))
            found.append((ObjectDetection(labels[int(info["label_id"])], float(info["score"]), box), mask))
        return found

    def _classifier(self, name: str) -> torch.Tensor:
        """Zero-shot colour classifier [10, D] of class ``name``: mean normalised text embedding per colour."""
        if name not in self._text_classifiers:
            model, processor = load_pretrained("clip", self.clip_name, self.device)
            rows = []
            for color in COLORS:
                texts = [template.format(color=color, name=name) for template in COLOR_TEMPLATES]
                tokens = processor.tokenizer(texts, padding=True, return_tensors="pt").to(self.device)
                embeds = _features(model.get_text_features(**tokens)).float()
                embeds = embeds / embeds.norm(dim=-1, keepdim=True)
                mean = embeds.mean(dim=0)
                rows.append(mean / mean.norm())
            self._text_classifiers[name] = torch.stack(rows)
        return self._text_classifiers[name]

    @torch.no_grad()
    def colors(self, image: np.ndarray, masked: list[tuple[ObjectDetection, np.ndarray]]) -> list[str]:
        """CLIP colour of each object: its mask over grey #999, cropped to its box (GenEval's ImageCrops)."""
        if not masked:
            return []
        model, processor = load_pretrained("clip", self.clip_name, self.device)
        crops = []
        for detection, mask in masked:
            composite = np.where(mask[..., None], image, np.uint8(0x99))
            x0, y0, x1, y1 = (round(v) for v in detection.box)
            crops.append(composite[y0:y1, x0:x1])
        pixels = processor.image_processor(images=crops, return_tensors="pt")["pixel_values"].to(self.device)
        embeds = _features(model.get_image_features(pixel_values=pixels)).float()
        embeds = embeds / embeds.norm(dim=-1, keepdim=True)
        return [
            COLORS[int((embed @ self._classifier(d.label).T).argmax())]
            for (d, _), embed in zip(masked, embeds, strict=True)
        ]

    def objects(self, image: np.ndarray, metadata: dict[str, Any]) -> dict[str, list[ObjectDetection]]:
        """The selected detections of one image for one prompt, with colours where a rule needs them."""
        detected = self.detect(image)
        selected = select_detections([d for d, _ in detected], str(metadata.get("tag", "")))
        masks = {id(d): m for d, m in detected}
        wanted = classes_needing_color(metadata)
        for label in wanted & set(selected):
            pairs = [(d, masks[id(d)]) for d in selected[label]]
            selected[label] = [
                ObjectDetection(d.label, d.score, d.box, color)
                for d, color in zip(selected[label], self.colors(image, pairs), strict=True)
            ]
        return selected

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> tuple[list[bool], list[float]]:
        """(strict verdict, partial credit) of each image [N, 3, H, W] in [0, 1] against its GenEval metadata."""
        for index, meta in enumerate(metadata):
            if "include" not in meta:
                raise RewardError(
                    f"geneval needs GenEval metadata (tag, include, exclude), but item {index} ({prompts[index]!r}) "
                    f"has keys {sorted(meta)}; read the prompts with the task 'geneval' from a GenEval metadata "
                    "file (e.g. written by `vgpo prompts geneval`)"
                )
        strict, partial = [], []
        for image, meta in zip(images_to_uint8(images), metadata, strict=True):
            objects = self.objects(image, meta)
            strict.append(strict_correct(objects, meta))
            partial.append(partial_score(objects, meta, self.partial))
        return strict, partial


def _features(output: Any) -> torch.Tensor:
    """get_*_features returns a tensor (transformers 4) or an output with a projected pooler_output (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class GenevalReward:
    """GenEval partial credit [N] (``strict=True``: GenEval's 0/1 verdict) of images [N, 3, H, W]."""

    name = "geneval"

    def __init__(self, scorer: GenevalScorer, strict: bool = False) -> None:
        self.scorer, self.strict = scorer, strict

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
        strict, partial = self.scorer.score(images, prompts, metadata)
        return torch.tensor([float(s) for s in strict] if self.strict else partial, dtype=torch.float32)


@register_reward("geneval")
def make_geneval_reward(
    detector: str = DEFAULT_DETECTOR,
    clip: str = DEFAULT_CLIP,
    device: str = "auto",
    strict: bool = False,
    partial: str = "baseline",
    **_: Any,
) -> GenevalReward:
    """Factory: ``detector`` / ``clip`` are local folders or cached hub ids of a Mask2Former COCO instance model
    and CLIP ViT-L/14; ``strict`` trains on GenEval's 0/1 verdict instead of partial credit; ``partial`` names the
    partial credit's form: "baseline" (the baseline reward server's, the default) or "clean"
    (`vgpo.scoring.geneval`)."""
    return GenevalReward(GenevalScorer(detector, clip, device, partial), strict=strict)
