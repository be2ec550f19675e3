"""GenEval's rules as pure functions over detections (no model here: `vgpo.rewards.geneval` runs the models).

A detection is (class, score, box, colour): the detector gives the class, score, box and mask; CLIP names the
colour of the masked, cropped object. The rules follow GenEval's ``evaluate_images.py``:

- keep a class's detections scoring above 0.3 (0.9 for the ``counting`` tag), highest first, at most 16 per
  class, with no non-maximum suppression;
- ``include`` entries: at least ``count`` objects of the class (the first ``count`` are checked further); with a
  ``color``, at least ``count`` of those have that colour; with a ``position`` [relation, j], every one of them
  stands in that relation to every object matched by include entry j (box centres, 0.1 margin,
  `vgpo.scoring.geometry.relative_position`);
- ``exclude`` entries: fewer than ``count`` objects of the class;
- strict: an image is correct when every rule holds (GenEval's score).

Two partial-credit scores for training, both means of per-include-entry terms (``PARTIAL_FORMS``):

- ``"baseline"`` (the default) is the baseline's training reward exactly, so that a run's reward is comparable
  with Flow-GRPO's and the paper's: ``evaluate_reward`` in the reward server Flow-GRPO trains with
  (github.com/yifan123/reward-server, ``reward_server/gen_eval.py``). Per entry, over all its detections: a count
  term 1 - |count - found| / count, NOT clipped (found > 2 count gives a negative term); if found != count, one
  0 term when the entry has a colour or a position (one, even with both); otherwise a colour term
  1 - |count - right colour| / count, and, only when the colour held, for a position: 0 if the target entry
  failed, else a 0 on the first violated pair and then a 1 whatever happened (the server's loop falls through to
  its final ``append(1.0)``), so a failed relation gives the two terms 0 and 1.
- ``"clean"``: the same checks read as their evident intent: the count term clipped at 0, a 0 for each of colour
  and position when the count fails, and the position term exactly 1 when every pair holds, else 0 (also when the
  colour failed). Its reward lies in [0, 1]; the baseline's can be negative.

The strict verdict is GenEval's ``evaluate`` in both (the first ``count`` detections, at least ``count``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vgpo.errors import ConfigError
from vgpo.scoring.geometry import relative_position

THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
POSITION_MARGIN = 0.1
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
"""GenEval's colour vocabulary, classified zero-shot by CLIP."""
COLOR_TEMPLATES = ("a photo of a {color} {name}", "a photo of a {color}-colored {name}", "a photo of a {color} object")
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote",
    "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock",
    "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
"""The 80 COCO classes under GenEval's names (``object_names.txt``)."""
DETECTOR_ALIASES = {"computer mouse": "mouse", "tv remote": "remote", "computer keyboard": "keyboard"}
"""GenEval names whose COCO detector label differs (the detectors' id2label use COCO's short names)."""


@dataclass(frozen=True)
class ObjectDetection:
    """One detected instance: GenEval class name, confidence in [0, 1], box (x0, y0, x1, y1) in px, and the
    CLIP colour of its masked crop (None when no rule asked for it)."""

    label: str
    score: float
    box: tuple[float, float, float, float]
    color: str | None = None


def select_detections(detections: Sequence[ObjectDetection], tag: str) -> dict[str, list[ObjectDetection]]:
    """Per class, the detections above the tag's threshold, highest score first, at most 16; no NMS."""
    threshold = COUNTING_THRESHOLD if tag == "counting" else THRESHOLD
    by_class: dict[str, list[ObjectDetection]] = {}
    for detection in sorted(detections, key=lambda d: -d.score):
        if detection.score > threshold and len(by_class.setdefault(detection.label, [])) < MAX_OBJECTS:
            by_class[detection.label].append(detection)
    return {label: found for label, found in by_class.items() if found}


def _relation_holds(objects: Sequence[ObjectDetection], targets: Sequence[ObjectDetection], relation: str) -> bool:
    return all(
        relation in relative_position(obj.box, target.box, POSITION_MARGIN) for obj in objects for target in targets
    )


def strict_correct(objects: dict[str, list[ObjectDetection]], metadata: dict[str, Any]) -> bool:
    """GenEval's verdict for one image: every include and exclude rule holds (see the module docstring)."""
    matched: list[list[ObjectDetection] | None] = []
    correct = True
    for req in metadata.get("include", []):
        count = int(req.get("count", 1))
        found = objects.get(req["class"], [])[:count]
        ok = len(found) >= count
        if ok and "color" in req:
            ok = [d.color for d in found].count(req["color"]) >= count
        if ok and req.get("position"):
            relation, target = req["position"]
            targets = matched[target] if target < len(matched) else None
            ok = targets is not None and _relation_holds(found, targets, relation)
        matched.append(found if ok else None)
        correct = correct and ok
    for req in metadata.get("exclude", []):
        if len(objects.get(req["class"], [])) >= int(req["count"]):
            correct = False
    return correct


def partial_score_baseline(objects: dict[str, list[ObjectDetection]], metadata: dict[str, Any]) -> float:
    """The baseline reward server's partial credit (``evaluate_reward``, module docstring); it may be < 0."""
    terms: list[float] = []
    matched: list[list[ObjectDetection] | None] = []
    for req in metadata.get("include", []):
        count = int(req.get("count", 1))
        found = objects.get(req["class"], [])  # every detection above threshold, not the first count
        terms.append(1.0 - abs(count - len(found)) / count)  # not clipped at 0
        ok = len(found) == count
        if not ok:
            if "color" in req or req.get("position"):  # a null position is no position (the server would fail)
                terms.append(0.0)  # one term, also for both
        else:
            if "color" in req:
                right = [d.color for d in found].count(req["color"])
                terms.append(1.0 - abs(count - right) / count)
                ok = right == count
            if req.get("position") and ok:
                relation, target = req["position"]
                targets = matched[target] if target < len(matched) else None
                if targets is None:
                    terms.append(0.0)
                    ok = False
                else:
                    if not _relation_holds(found, targets, relation):
                        terms.append(0.0)  # the first violated pair
                        ok = False
                    terms.append(1.0)  # the server's loop falls through to this term whatever happened
        matched.append(found if ok else None)
    return float(sum(terms) / len(terms)) if terms else 0.0


def partial_score_clean(objects: dict[str, list[ObjectDetection]], metadata: dict[str, Any]) -> float:
    """The cleaned partial credit in [0, 1] (``"clean"``, module docstring)."""
    terms: list[float] = []
    matched: list[list[ObjectDetection] | None] = []
    for req in metadata.get("include", []):
        count = int(req.get("count", 1))
        found = objects.get(req["class"], [])
        terms.append(max(0.0, 1.0 - abs(count - len(found)) / count))
        ok = len(found) == count
        if not ok:
            terms.extend(0.0 for key in ("color", "position") if req.get(key))
        else:
            if "color" in req:
                right = [d.color for d in found].count(req["color"])
                terms.append(max(0.0, 1.0 - abs(count - right) / count))
                ok = right == count
            if req.get("position"):
                relation, target = req["position"]
                targets = matched[target] if target < len(matched) else None
                holds = ok and targets is not None and _relation_holds(found, targets, relation)
                terms.append(1.0 if holds else 0.0)
                ok = holds
        matched.append(found if ok else None)
    return float(sum(terms) / len(terms)) if terms else 0.0


PARTIAL_FORMS = {"baseline": partial_score_baseline, "clean": partial_score_clean}
"""The partial-credit scores by name (``task.reward_options.geneval.partial``); "baseline" is the default."""


def partial_score(objects: dict[str, list[ObjectDetection]], metadata: dict[str, Any], form: str = "baseline") -> float:
    """Partial credit for training in the named form (``PARTIAL_FORMS``, module docstring)."""
    if form not in PARTIAL_FORMS:
        raise ConfigError(
            f"unknown GenEval partial-credit form {form!r} (task.reward_options.geneval.partial); "
            f"known: {', '.join(PARTIAL_FORMS)}"
        )
    return PARTIAL_FORMS[form](objects, metadata)


def classes_needing_color(metadata: dict[str, Any]) -> set[str]:
    """Classes whose detections need a CLIP colour for this prompt."""
    return {req["class"] for req in metadata.get("include", []) if "color" in req}
