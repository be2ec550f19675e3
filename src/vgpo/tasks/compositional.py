"""Compositional task: a GenEval in miniature on procedural scenes of coloured shapes.

Scenes are circles, squares and triangles in five well-separated colours on a light plain background.
Prompts cover GenEval's sub-categories (single_object, two_object, counting, colors, position, color_attr);
each item's metadata carries the structured spec, so the checker never parses text:

    {"category": "position", "objects": [{"color": "blue", "shape": "square", "count": 1},
                                         {"color": "yellow", "shape": "triangle", "count": 1}],
     "relation": "left of", "exact_count": false}

The checker segments colours (chroma + hue thresholds) and labels connected components, then applies
GenEval's rules for a strict pass/fail; :func:`graded_scores` gives a score in [0, 1] that stays informative on
blurry images (colour mass, soft counts, soft shape match, soft position margin) for use as a dense reward.

Held out for the test split: prompts naming the colour-shape pairs in :data:`HELD_OUT_PAIRS`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

from vgpo.errors import ConfigError
from vgpo.tasks.base import PromptItem, load_prompts, prompt_file, summarise_accuracy

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "yellow": (230, 200, 20),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "purple": (150, 40, 200),
}
SHAPES = ("circle", "square", "triangle")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
RELATIONS = ("left of", "right of", "above", "below")
CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
HELD_OUT_PAIRS = frozenset({("purple", "triangle"), ("green", "circle"), ("yellow", "square")})
"""(colour, shape) pairs that no train prompt (shipped or sampled) names; test prompts name at least one."""

BACKGROUND = (238, 238, 234)
COLOR_NAMES = tuple(COLORS)


def _hue_degrees(rgb: tuple[int, int, int]) -> float:
    r, g, b = (c / 255.0 for c in rgb)
    high, low = max(r, g, b), min(r, g, b)
    chroma = high - low
    if high == r:
        hue = ((g - b) / chroma) % 6.0
    elif high == g:
        hue = (b - r) / chroma + 2.0
    else:
        hue = (r - g) / chroma + 4.0
    return 60.0 * hue


PALETTE_HUES = np.array([_hue_degrees(COLORS[name]) for name in COLOR_NAMES], dtype=np.float32)  # [K] degrees

# Geometry at the reference size of 64 px (scaled with image_size).
HALF_SIZE_RANGE = (7.0, 10.0)  # half-extent of a shape's bounding box, px
GAP = 4.0  # minimum free space between two shapes' bounding boxes, px
MIN_AREA = 30.0  # smallest connected component counted as an object, px
REFERENCE_AREA = 200.0  # typical object area, px (mean over shapes and sizes) for the colour-mass term
FILL_RATIO = {"circle": 0.78, "square": 0.99, "triangle": 0.54}
"""Area / bounding-box area of each rendered shape at 64 px (measured on rendered scenes)."""
FILL_TOLERANCE = 0.06  # fill ratios this close to a shape's count as that shape in full
FILL_WIDTH = 0.08  # width of the Gaussian fall-off of the soft shape likelihood beyond the tolerance

# Segmentation thresholds: a pixel belongs to colour k if its chroma (max - min of RGB in [0, 1]) is high
# enough and its hue is near k's. Hard masks (strict checks) use a cut; soft masks (graded score) a ramp.
HARD_CHROMA = 0.3
ADAPTIVE_FLOOR = 0.12  # lowest chroma cut of the adaptive labels (graded score), so a blank image stays blank
HARD_HUE = 30.0
SOFT_CHROMA = (0.1, 0.4)  # membership ramps from 0 to 1 between these chromas
SOFT_HUE = (15.0, 35.0)  # full membership within 15 degrees of the palette hue, none beyond 35


# ---------------------------------------------------------------------------------------------- prompts


def _object_phrase(color: str | None, shape: str, count: int = 1, numeral: bool = False) -> str:
    words = [color] if color else []
    noun = shape if count == 1 else PLURALS[shape]
    article = NUMBER_WORDS[count] if numeral else "a"
    return " ".join([article, *words, noun])


def make_item(
    category: str, objects: list[dict[str, Any]], relation: str | None = None, exact_count: bool = False
) -> PromptItem:
    """A prompt item from a structured spec (the prompt text is generated from it)."""
    if category == "counting":
        spec = objects[0]
        prompt = _object_phrase(spec["color"], spec["shape"], spec["count"], numeral=True)
    elif category == "position":
        prompt = f"{_object_phrase(objects[0]['color'], objects[0]['shape'])} {relation} " + _object_phrase(
            objects[1]["color"], objects[1]["shape"]
        )
    else:
        prompt = " and ".join(_object_phrase(spec["color"], spec["shape"]) for spec in objects)
    metadata = {
        "category": category,
        "objects": [dict(spec) for spec in objects],
        "relation": relation,
        "exact_count": exact_count,
    }
    return PromptItem(prompt=prompt, metadata=metadata)


def _obj(color: str | None, shape: str, count: int = 1) -> dict[str, Any]:
    return {"color": color, "shape": shape, "count": count}


def all_items(category: str) -> list[PromptItem]:
    """Every prompt of a category, in a fixed order (the shipped splits are drawn from these)."""
    if category == "single_object":
        return [make_item(category, [_obj(None, shape)]) for shape in SHAPES]
    if category == "two_object":
        return [make_item(category, [_obj(None, a), _obj(None, b)]) for a, b in itertools.permutations(SHAPES, 2)]
    if category == "counting":
        colors: list[str | None] = [None, *COLOR_NAMES]
        return [
            make_item(category, [_obj(color, shape, count)], exact_count=True)
            for color in colors
            for shape in SHAPES
            for count in NUMBER_WORDS
        ]
    if category == "colors":
        return [make_item(category, [_obj(color, shape)]) for color in COLOR_NAMES for shape in SHAPES]
    objects = list(itertools.product(COLOR_NAMES, SHAPES))
    if category == "position":
        return [
            make_item(category, [_obj(*a), _obj(*b)], relation=relation)
            for a, b in itertools.permutations(objects, 2)
            if a[0] != b[0]
            for relation in RELATIONS
        ]
    if category == "color_attr":
        return [
            make_item(category, [_obj(*a), _obj(*b)])
            for a, b in itertools.permutations(objects, 2)
            if a[0] != b[0] and a[1] != b[1]
        ]
    raise ConfigError(f"unknown compositional category {category!r}; known: {', '.join(CATEGORIES)}")


def is_held_out(item: PromptItem) -> bool:
    """Whether the item names a held-out (colour, shape) pair (such items belong to the test split only)."""
    return any((spec["color"], spec["shape"]) in HELD_OUT_PAIRS for spec in item.metadata["objects"])


def make_splits(seed: int = 0, train_per_category: int = 150, test_per_category: int = 50) -> dict[str, list]:
    """The shipped train/test prompt sets (what ``scripts/make_prompts.py`` writes).

    Categories that name colours split on :data:`HELD_OUT_PAIRS` (test items name one, train items none);
    the colour-free categories (single_object, two_object, colour-free counting) have too few prompts to
    split and appear in both sets. Categories are capped at ``*_per_category`` prompts, drawn with ``seed``.
    """
    rng = np.random.default_rng(seed)
    splits: dict[str, list[PromptItem]] = {"train": [], "test": []}
    for category in CATEGORIES:
        items = all_items(category)
        colour_free = [i for i in items if all(s["color"] is None for s in i.metadata["objects"])]
        train = [i for i in items if i not in colour_free and not is_held_out(i)]
        test = [i for i in items if is_held_out(i)]
        for split, pool, cap in (("train", train, train_per_category), ("test", test, test_per_category)):
            if len(pool) > cap:
                pool = [pool[k] for k in sorted(rng.choice(len(pool), size=cap, replace=False))]
            splits[split].extend(colour_free + pool)
    return splits


def _random_item(category: str, rng: np.random.Generator) -> PromptItem:
    """A random train-allowed item of ``category`` (never names a held-out pair)."""
    while True:
        shapes = rng.permutation(SHAPES)
        colors = rng.permutation(COLOR_NAMES)
        if category == "single_object":
            item = make_item(category, [_obj(None, str(shapes[0]))])
        elif category == "two_object":
            item = make_item(category, [_obj(None, str(shapes[0])), _obj(None, str(shapes[1]))])
        elif category == "counting":
            color = str(colors[0]) if rng.random() < 0.5 else None
            item = make_item(category, [_obj(color, str(shapes[0]), int(rng.integers(1, 5)))], exact_count=True)
        elif category == "colors":
            item = make_item(category, [_obj(str(colors[0]), str(shapes[0]))])
        elif category == "position":
            second_shape = str(rng.choice(SHAPES))
            relation = str(rng.choice(RELATIONS))
            objects = [_obj(str(colors[0]), str(shapes[0])), _obj(str(colors[1]), second_shape)]
            item = make_item(category, objects, relation=relation)
        elif category == "color_attr":
            item = make_item(category, [_obj(str(colors[0]), str(shapes[0])), _obj(str(colors[1]), str(shapes[1]))])
        else:
            raise ConfigError(f"unknown compositional category {category!r}; known: {', '.join(CATEGORIES)}")
        if not is_held_out(item):
            return item


# -------------------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class PlacedShape:
    """A shape in a scene: centre (x, y) and half-extent in px, colour and shape names."""

    color: str
    shape: str
    x: float
    y: float
    half: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x - self.half, self.y - self.half, self.x + self.half, self.y + self.half)


def relative_position(box_a: tuple[float, ...], box_b: tuple[float, ...], threshold: float = 0.1) -> set[str]:
    """GenEval's relation rule: where box A (x0, y0, x1, y1) is relative to box B, object sizes discounted.

    The centre offset is shrunk by ``threshold`` times the summed box sizes; a relation holds when the shrunk
    offset, divided by the true distance, exceeds 0.5 along its axis (image y grows downwards).
    """
    center_a = np.array([(box_a[0] + box_a[2]) / 2, (box_a[1] + box_a[3]) / 2])
    center_b = np.array([(box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2])
    dim_a = np.array([box_a[2] - box_a[0], box_a[3] - box_a[1]])
    dim_b = np.array([box_b[2] - box_b[0], box_b[3] - box_b[1]])
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - threshold * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def _free_color(shape: str, rng: np.random.Generator) -> str:
    allowed = [c for c in COLOR_NAMES if (c, shape) not in HELD_OUT_PAIRS]
    return str(rng.choice(allowed))


def layout(item: PromptItem, rng: np.random.Generator, image_size: int = 64) -> list[PlacedShape]:
    """A random non-overlapping layout that satisfies the item's spec (relation unambiguous)."""
    scale = image_size / 64.0
    meta = item.metadata
    wanted: list[tuple[str, str]] = []
    for spec in meta["objects"]:
        for _ in range(int(spec["count"])):
            color = spec["color"] or _free_color(spec["shape"], rng)
            wanted.append((color, spec["shape"]))
    for _attempt in range(1000):
        placed: list[PlacedShape] = []
        for color, shape in wanted:
            half = float(rng.uniform(*HALF_SIZE_RANGE)) * scale
            for _try in range(100):
                low, high = half + 2 * scale, image_size - half - 3 * scale
                candidate = PlacedShape(
                    color, shape, float(rng.uniform(low, high)), float(rng.uniform(low, high)), half
                )
                if all(_apart(candidate, other, GAP * scale) for other in placed):
                    placed.append(candidate)
                    break
            else:
                break
        if len(placed) != len(wanted):
            continue
        if meta.get("relation") and relative_position(placed[0].box, placed[1].box) != {meta["relation"]}:
            continue
        return placed
    raise RuntimeError(f"could not lay out {item.prompt!r} in {image_size} px")  # pragma: no cover


def _apart(a: PlacedShape, b: PlacedShape, gap: float) -> bool:
    reach = a.half + b.half + gap
    return abs(a.x - b.x) >= reach or abs(a.y - b.y) >= reach


def draw_scene(shapes: list[PlacedShape], image_size: int = 64, background: tuple[int, ...] = BACKGROUND) -> np.ndarray:
    """Draw shapes at 4x and downsample (anti-aliased edges). Returns uint8 [H, W, 3]."""
    factor = 4
    canvas = Image.new("RGB", (image_size * factor, image_size * factor), tuple(background))
    draw = ImageDraw.Draw(canvas)
    for placed in shapes:
        x, y, h = placed.x * factor, placed.y * factor, placed.half * factor
        fill = COLORS[placed.color]
        if placed.shape == "circle":
            draw.ellipse((x - h, y - h, x + h, y + h), fill=fill)
        elif placed.shape == "square":
            draw.rectangle((x - h, y - h, x + h, y + h), fill=fill)
        else:
            draw.polygon([(x, y - h), (x - h, y + h), (x + h, y + h)], fill=fill)
    return np.array(canvas.resize((image_size, image_size), Image.Resampling.BOX))


# --------------------------------------------------------------------------------------------- checking


@dataclass(frozen=True)
class Detection:
    """A connected component of one colour: area (px), box (x0, y0, x1, y1), fill ratio, nearest shape."""

    color: str
    shape: str
    area: float
    box: tuple[float, float, float, float]
    fill: float


def _chroma_hue(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chroma [N, H, W] in [0, 1] and hue [N, H, W] in degrees of float images [N, 3, H, W] in [0, 1].

    NumPy rather than torch: on a few small images it is several times faster on CPU.
    """
    r, g, b = images[:, 0], images[:, 1], images[:, 2]
    high = images.max(axis=1)
    chroma = high - images.min(axis=1)
    safe = np.maximum(chroma, 1e-6)
    hue = np.where(
        high == r,
        np.mod((g - b) / safe, 6.0),
        np.where(high == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
    )
    return chroma, hue * 60.0


def _hue_distance(hue: np.ndarray) -> np.ndarray:
    """Angular distance [N, K, H, W] in degrees from each pixel's hue [N, H, W] to each palette hue."""
    diff = np.abs(hue[:, None] - PALETTE_HUES[None, :, None, None])
    return np.minimum(diff, 360.0 - diff)


def _as_array(images: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        images = images.detach().to("cpu", torch.float32).numpy()
    return np.clip(np.asarray(images, dtype=np.float32), 0.0, 1.0)


def soft_membership(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Soft colour membership [N, K, H, W] in [0, 1] of each pixel of images [N, 3, H, W] to each colour."""
    chroma, hue = _chroma_hue(_as_array(images))
    return _soft_membership(chroma, _hue_distance(hue))


def _soft_membership(chroma: np.ndarray, distance: np.ndarray) -> np.ndarray:
    low, high = SOFT_CHROMA
    chroma_weight = np.clip((chroma - low) / (high - low), 0.0, 1.0)[:, None]
    hue_low, hue_high = SOFT_HUE
    hue_weight = np.clip(1.0 - (distance - hue_low) / (hue_high - hue_low), 0.0, 1.0)
    return chroma_weight * hue_weight


def hard_labels(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Colour index map [N, H, W] int: palette index of each pixel, -1 for background/unassigned."""
    chroma, hue = _chroma_hue(_as_array(images))
    return _hard_labels(chroma, _hue_distance(hue))


def _hard_labels(chroma: np.ndarray, distance: np.ndarray) -> np.ndarray:
    nearest = distance.argmin(axis=1)
    nearest_distance = np.take_along_axis(distance, nearest[:, None], axis=1)[:, 0]
    return np.where((chroma >= HARD_CHROMA) & (nearest_distance <= HARD_HUE), nearest, -1)


def _adaptive_labels(chroma: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Like the hard labels, but each colour is cut at half its own peak chroma in the image (at least
    ADAPTIVE_FLOOR): the half-height contour of a blurred or faded shape keeps the shape's outline, where a
    fixed cut grows it into a round blob. Used by the graded score only; the strict check keeps fixed cuts."""
    nearest = distance.argmin(axis=1)  # [N, H, W]
    nearest_distance = np.take_along_axis(distance, nearest[:, None], axis=1)[:, 0]
    hue_ok = nearest_distance <= HARD_HUE
    count = chroma.shape[0]
    peak = np.stack(
        [
            np.where(hue_ok & (nearest == k), chroma, 0.0).reshape(count, -1).max(axis=1)
            for k in range(distance.shape[1])
        ],
        axis=1,
    )  # [N, K]
    cut = np.maximum(0.5 * peak, ADAPTIVE_FLOOR)  # [N, K]
    pixel_cut = cut[np.arange(count)[:, None, None], nearest]  # [N, H, W]: the cut of each pixel's colour
    return np.where(hue_ok & (chroma >= pixel_cut), nearest, -1)


def classify_shape(fill: float) -> str:
    """Shape whose rendered fill ratio (area / bounding-box area) is nearest ``fill``."""
    return min(FILL_RATIO, key=lambda shape: abs(FILL_RATIO[shape] - fill))


def detect(labels: np.ndarray, min_area: float = MIN_AREA) -> list[Detection]:
    """Connected components (8-connected) of each colour in one label map [H, W]."""
    detections = []
    structure = np.ones((3, 3), dtype=bool)
    for k, color in enumerate(COLOR_NAMES):
        mask = labels == k
        if mask.sum() < min_area:
            continue
        components, count = ndimage.label(mask, structure=structure)
        areas = np.bincount(components.ravel(), minlength=count + 1)
        large = np.flatnonzero(areas[1:] >= min_area) + 1  # label ids of components big enough to count
        if large.size == 0:
            continue
        all_slices = ndimage.find_objects(components)
        for index in large:
            rows, cols = all_slices[index - 1]
            box = (float(cols.start), float(rows.start), float(cols.stop), float(rows.stop))
            fill = float(areas[index]) / float((rows.stop - rows.start) * (cols.stop - cols.start))
            detections.append(Detection(color, classify_shape(fill), float(areas[index]), box, fill))
    return detections


def _matches(detection: Detection, spec: dict[str, Any]) -> bool:
    return (spec["color"] is None or detection.color == spec["color"]) and detection.shape == spec["shape"]


def strict_pass(detections: list[Detection], metadata: dict[str, Any]) -> bool:
    """GenEval's rules: every object present (counting: exactly ``count``), colours bound, relation holds."""
    found = []
    for spec in metadata["objects"]:
        matching = sorted((d for d in detections if _matches(d, spec)), key=lambda d: -d.area)
        if metadata.get("exact_count") and len(matching) != spec["count"]:
            return False
        if len(matching) < spec["count"]:
            return False
        found.append(matching)
    relation = metadata.get("relation")
    if relation:
        return relation in relative_position(found[0][0].box, found[1][0].box)
    return True


def _shape_likelihood(fill: float, shape: str) -> float:
    excess = max(0.0, abs(fill - FILL_RATIO[shape]) - FILL_TOLERANCE)
    return float(np.exp(-((excess / FILL_WIDTH) ** 2)))


def _mass_score(mass: float, expected: float) -> float:
    """1 while mass is within [0.5, 2] x expected, falling linearly (in ratio) to 0 outside."""
    ratio = mass / max(expected, 1e-6)
    return float(np.clip(min(ratio / 0.5, 2.0 / max(ratio, 1e-6)), 0.0, 1.0))


def _relation_score(centroid_a: np.ndarray, centroid_b: np.ndarray, relation: str, scale: float) -> float:
    """Soft version of the relation rule on colour-mass centroids (x, y): ~1 with a clear margin, ~0 reversed.

    u is the offset of A from B along the relation's direction, v the offset across it; the hard rule (offset
    within 60 degrees of the direction) is u > v / sqrt(3); the score is a sigmoid of that margin less 2 px.
    """
    direction = {"left of": (-1, 0), "right of": (1, 0), "above": (0, -1), "below": (0, 1)}[relation]
    offset = centroid_a - centroid_b
    along = float(offset[0] * direction[0] + offset[1] * direction[1])
    across = abs(float(offset[0] * direction[1] - offset[1] * direction[0]))
    margin = (along - across / np.sqrt(3.0) - 2.0 * scale) / (2.0 * scale)
    return float(1.0 / (1.0 + np.exp(-margin)))


def graded_score(
    detections: list[Detection],
    mass: np.ndarray,
    centroids: np.ndarray,
    metadata: dict[str, Any],
    image_size: int,
) -> float:
    """Graded compliance in [0, 1] of one image, smooth enough for blurry one-step projections.

    Per required object: 0.3 x colour-mass term (the colour's soft mass within [0.5, 2] x the expected
    area) + 0.7 x soft-count term (components of the colour weighted by shape likelihood and size, compared
    with the wanted count). Position items: 0.5 x that mean + 0.5 x a soft relation margin on the two colours'
    mass centroids, weighted down while either colour is nearly absent. ``detections`` should come from the
    adaptive labels (each colour cut at half its peak chroma), which keep shapes on faded images.
    mass [K] soft colour mass in px; centroids [K, 2] (x, y) in px.
    """
    scale = image_size / 64.0
    reference_area = REFERENCE_AREA * scale**2
    specs = metadata["objects"]
    colour_free_count = sum(int(s["count"]) for s in specs if s["color"] is None)
    parts = []
    for spec in specs:
        count = int(spec["count"])
        if spec["color"] is None:
            mass_term = _mass_score(float(mass.sum()), colour_free_count * reference_area)
        else:
            mass_term = _mass_score(float(mass[COLOR_NAMES.index(spec["color"])]), count * reference_area)
        soft_count = sum(
            _shape_likelihood(d.fill, spec["shape"]) * min(1.0, d.area / (2 * MIN_AREA * scale**2))
            for d in detections
            if spec["color"] is None or d.color == spec["color"]
        )
        if metadata.get("exact_count"):
            count_term = max(0.0, 1.0 - abs(soft_count - count) / count)
        else:
            count_term = min(soft_count, count) / count
        parts.append(0.3 * mass_term + 0.7 * count_term)
    score = float(np.mean(parts))
    relation = metadata.get("relation")
    if relation:
        index_a, index_b = (COLOR_NAMES.index(s["color"]) for s in specs[:2])
        presence = min(1.0, mass[index_a] / (0.25 * reference_area)) * min(1.0, mass[index_b] / (0.25 * reference_area))
        relation_term = _relation_score(centroids[index_a], centroids[index_b], relation, scale) * presence
        score = 0.5 * score + 0.5 * relation_term
    return float(np.clip(score, 0.0, 1.0))


def check_images(images: torch.Tensor | np.ndarray, metadata: list[dict[str, Any]]) -> tuple[list[bool], list[float]]:
    """Strict pass and graded score of each image [N, 3, H, W] in [0, 1] against its spec."""
    array = _as_array(images)
    image_size = array.shape[-1]
    chroma, hue = _chroma_hue(array)
    distance = _hue_distance(hue)  # [N, K, H, W]
    labels = _hard_labels(chroma, distance)  # [N, H, W], fixed cuts: strict check
    adaptive = _adaptive_labels(chroma, distance)  # [N, H, W], per-colour cuts: graded score
    membership = _soft_membership(chroma, distance)  # [N, K, H, W]
    mass = membership.sum(axis=(2, 3))  # [N, K]
    ys = np.arange(array.shape[-2], dtype=np.float32) + 0.5
    xs = np.arange(array.shape[-1], dtype=np.float32) + 0.5
    safe_mass = np.maximum(mass, 1e-6)
    centroids = np.stack(
        [
            (membership.sum(axis=2) * xs).sum(axis=-1) / safe_mass,
            (membership.sum(axis=3) * ys).sum(axis=-1) / safe_mass,
        ],
        axis=-1,
    )  # [N, K, 2] (x, y)
    passed, scores = [], []
    for index, meta in enumerate(metadata):
        min_area = MIN_AREA * (image_size / 64.0) ** 2
        passed.append(strict_pass(detect(labels[index], min_area), meta))
        graded = detect(adaptive[index], min_area)
        scores.append(graded_score(graded, mass[index], centroids[index], meta, image_size))
    return passed, scores


# --------------------------------------------------------------------------------------------------- task


class CompositionalTask:
    """The compositional task (see the module docstring)."""

    name = "compositional"
    reward_name = "compositional"

    def __init__(self, image_size: int = 64) -> None:
        self.image_size = image_size

    def prompts(self, split: str) -> list[PromptItem]:
        return load_prompts(prompt_file(self.name, split))

    def render(self, item: PromptItem, rng: np.random.Generator) -> np.ndarray:
        background = tuple(int(c + rng.integers(-6, 7)) for c in BACKGROUND)
        return draw_scene(layout(item, rng, self.image_size), self.image_size, background)

    def sample_items(self, rng: np.random.Generator, n: int) -> list[PromptItem]:
        return [_random_item(CATEGORIES[int(rng.integers(len(CATEGORIES)))], rng) for _ in range(n)]

    def evaluate(self, images: torch.Tensor, items: list[PromptItem]) -> dict[str, float]:
        passed, scores = check_images(images, [item.metadata for item in items])
        return summarise_accuracy(passed, scores, [item.metadata["category"] for item in items])
