"""GenEval's training score against an independent transcription of the baseline's reward server.

`vgpo.scoring.geneval.partial_score_baseline` must equal, on thousands of seeded random detection sets, the
loop below, written apart from it in the server's own style (``evaluate_reward`` and ``evaluate`` of
github.com/yifan123/reward-server, ``reward_server/gen_eval.py``: flags, breaks and the fall-through ``1.0``),
with its own relative-position helper. The strict verdict is checked against the server's ``evaluate`` the same
way, and the "clean" form is checked to differ where the two forms are documented to differ.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from vgpo.errors import ConfigError
from vgpo.scoring.geneval import (
    ObjectDetection,
    partial_score,
    partial_score_baseline,
    partial_score_clean,
    select_detections,
    strict_correct,
)

CLASSES = ("dog", "cat", "cup")
PALETTE = ("red", "blue", "green")
RELATIONS = ("left of", "right of", "above", "below")
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def server_relations(box_a: tuple, box_b: tuple, margin: float = 0.1) -> set[str]:
    """A's position relative to B from box centres, each offset shrunk by the margin times the boxes' sizes."""
    boxes = np.array([box_a, box_b], dtype=np.float64).reshape(2, 2, 2)
    centre_a, centre_b = boxes.mean(axis=1)
    size_a, size_b = np.abs(boxes[:, 1] - boxes[:, 0])
    offset = centre_a - centre_b
    shrunk = np.maximum(np.abs(offset) - margin * (size_a + size_b), 0) * np.sign(offset)
    if np.all(np.abs(shrunk) < 1e-3):
        return set()
    dx, dy = shrunk / np.linalg.norm(offset)
    found = set()
    if dx < -0.5:
        found.add("left of")
    if dx > 0.5:
        found.add("right of")
    if dy < -0.5:
        found.add("above")
    if dy > 0.5:
        found.add("below")
    return found


def server_reward(objects: dict[str, list[ObjectDetection]], metadata: dict[str, Any]) -> float:
    """The server's ``evaluate_reward`` score, transcribed loop for loop."""
    rewards: list[float] = []
    matched_groups: list[Any] = []
    for req in metadata.get("include", []):
        matched = True
        found_objects = objects.get(req["class"], [])
        rewards.append(1 - abs(req["count"] - len(found_objects)) / req["count"])
        if len(found_objects) != req["count"]:
            matched = False
            if "color" in req or "position" in req:
                rewards.append(0.0)
        else:
            if "color" in req:
                colors = [obj.color for obj in found_objects]
                rewards.append(1 - abs(req["count"] - colors.count(req["color"])) / req["count"])
                if colors.count(req["color"]) != req["count"]:
                    matched = False
            if "position" in req and matched:
                expected_rel, target_group = req["position"]
                if matched_groups[target_group] is None:
                    matched = False
                    rewards.append(0.0)
                else:
                    for obj in found_objects:
                        for target_obj in matched_groups[target_group]:
                            if expected_rel not in server_relations(obj.box, target_obj.box):
                                matched = False
                                rewards.append(0.0)
                                break
                        if not matched:
                            break
                    rewards.append(1.0)
        matched_groups.append(found_objects if matched else None)
    return sum(rewards) / len(rewards) if rewards else 0


def server_strict(objects: dict[str, list[ObjectDetection]], metadata: dict[str, Any]) -> bool:
    """The server's (GenEval's) ``evaluate`` verdict, transcribed loop for loop."""
    correct = True
    matched_groups: list[Any] = []
    for req in metadata.get("include", []):
        matched = True
        found_objects = objects.get(req["class"], [])[: req["count"]]
        if len(found_objects) < req["count"]:
            correct = matched = False
        else:
            if "color" in req:  # noqa: SIM102 (the server's nesting, kept)
                if [obj.color for obj in found_objects].count(req["color"]) < req["count"]:
                    correct = matched = False
            if "position" in req and matched:
                expected_rel, target_group = req["position"]
                if matched_groups[target_group] is None:
                    correct = matched = False
                else:
                    for obj in found_objects:
                        for target_obj in matched_groups[target_group]:
                            if expected_rel not in server_relations(obj.box, target_obj.box):
                                correct = matched = False
                                break
                        if not matched:
                            break
        matched_groups.append(found_objects if matched else None)
    for req in metadata.get("exclude", []):
        if len(objects.get(req["class"], [])) >= req["count"]:
            correct = False
    return correct


def random_case(rng: random.Random) -> tuple[dict[str, list[ObjectDetection]], dict[str, Any]]:
    """Selected detections and a metadata record; few classes and colours, so that counts and colours collide."""
    include = []
    for index in range(rng.randint(1, 3)):
        entry: dict[str, Any] = {"class": rng.choice(CLASSES), "count": rng.choice((1, 1, 2, 3, 4))}
        if rng.random() < 0.4:
            entry["color"] = rng.choice(PALETTE)
        if index > 0 and rng.random() < 0.5:
            entry["position"] = [rng.choice(RELATIONS), rng.randrange(index)]
        include.append(entry)
    metadata: dict[str, Any] = {"tag": rng.choice(TAGS), "include": include}
    if rng.random() < 0.3:
        metadata["exclude"] = [{"class": rng.choice(CLASSES), "count": rng.randint(1, 4)}]
    detections = []
    for label in CLASSES:
        for _ in range(rng.choice((0, 1, 1, 2, 3, 4, 6, 9))):
            x0, y0 = rng.uniform(0, 400), rng.uniform(0, 400)
            box = (x0, y0, x0 + rng.uniform(5, 120), y0 + rng.uniform(5, 120))
            detections.append(ObjectDetection(label, rng.uniform(0.2, 1.0), box, rng.choice(PALETTE)))
    return select_detections(detections, metadata["tag"]), metadata


def test_the_default_score_is_the_baseline_servers_on_thousands_of_random_detection_sets() -> None:
    rng = random.Random(24)
    cases = 5000
    forms_differ = negative = 0
    for _ in range(cases):
        objects, metadata = random_case(rng)
        expected = server_reward(objects, metadata)
        assert partial_score(objects, metadata) == pytest.approx(expected, abs=1e-12), metadata
        assert partial_score_baseline(objects, metadata) == pytest.approx(expected, abs=1e-12), metadata
        assert strict_correct(objects, metadata) == server_strict(objects, metadata), metadata
        forms_differ += abs(partial_score_clean(objects, metadata) - expected) > 1e-12
        negative += expected < 0
    # the random sets reach what tells the forms apart: too many objects (a negative term) and failed relations
    assert negative > 0 and forms_differ > cases // 50, (negative, forms_differ)


DOG_LEFT, CAT_RIGHT = (10, 40, 60, 90), (140, 40, 190, 90)
POSITION = {
    "tag": "position",
    "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["left of", 0]}],
}


def test_the_forms_differ_where_documented() -> None:
    cat = [ObjectDetection("cat", 0.9, CAT_RIGHT)]
    # a violated relation: the server appends 0 and then 1 -> mean(1, 1, 0, 1) = 0.75; clean: mean(1, 1, 0)
    swapped = {"cat": [ObjectDetection("cat", 0.9, DOG_LEFT)], "dog": [ObjectDetection("dog", 0.9, CAT_RIGHT)]}
    assert partial_score(swapped, POSITION) == 0.75
    assert partial_score(swapped, POSITION, "clean") == pytest.approx(2 / 3)
    # a held relation: one 1 in both forms -> 1
    held = {"cat": cat, "dog": [ObjectDetection("dog", 0.9, DOG_LEFT)]}
    assert partial_score(held, POSITION) == partial_score(held, POSITION, "clean") == 1.0
    # three dogs for one: count term 1 - |1 - 3| / 1 = -1 (clean: 0); a colour and a position on a failed count
    # give the server one 0 term and clean two: server mean(1, -1, 0) = 0, clean mean(1, 0, 0, 0) = 0
    three = {"cat": cat, "dog": [ObjectDetection("dog", 0.9, DOG_LEFT)] * 3}
    both = {"tag": "position", "include": [POSITION["include"][0], {**POSITION["include"][1], "color": "red"}]}
    assert partial_score(three, both) == pytest.approx(0.0) and partial_score(three, both, "clean") == 0.25
    assert partial_score(three, POSITION) == pytest.approx(0.0)
    with pytest.raises(ConfigError, match=r"unknown GenEval partial-credit form 'cleaned'.*baseline, clean"):
        partial_score(held, POSITION, "cleaned")


def test_the_form_is_a_reward_option() -> None:
    from vgpo.rewards.geneval import GenevalScorer

    with pytest.raises(ConfigError, match=r"task\.reward_options.geneval.partial must be one of baseline, clean"):
        GenevalScorer("unused", "unused", "cpu", partial="exact")
