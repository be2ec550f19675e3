"""Text-rendering task: prompts ask for a short word in the image, scored by a real OCR model.

Words are 2-4 characters from upper-case letters and digits, leaving out the pairs an OCR model cannot
tell apart in a plain font (I/1, O/0). Categories are the word lengths ("len2", "len3", "len4"). Metadata:
``{"category": "len3", "text": "CAT", "template": 0}``. Test words never occur in the train split, nor in
:meth:`TextTask.sample_items`. The ground truth is the word in Pillow's built-in scalable font (no font
file is bundled), dark on a light background, as large as fits, with a random offset and colours.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from vgpo.tasks.base import PromptItem, images_to_uint8, load_prompts, prompt_file, summarise_accuracy

ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
LENGTHS = (2, 3, 4)
TEMPLATES = ('a sign that says "{}"', 'the word "{}" in bold letters', 'a poster with the text "{}"')
TEXT_WIDTH = 0.82  # the word spans about this fraction of the image width (4 characters: of a line)


def make_item(text: str, template: int = 0) -> PromptItem:
    return PromptItem(
        prompt=TEMPLATES[template].format(text),
        metadata={"category": f"len{len(text)}", "text": text, "template": template},
    )


def random_word(rng: np.random.Generator, length: int) -> str:
    return "".join(ALPHABET[int(k)] for k in rng.integers(len(ALPHABET), size=length))


def make_splits(seed: int = 0, train_per_length: int = 100, test_per_length: int = 50) -> dict[str, list]:
    """The shipped prompt sets: distinct random words per length, test words disjoint from train words."""
    rng = np.random.default_rng(seed)
    splits: dict[str, list[PromptItem]] = {"train": [], "test": []}
    for length in LENGTHS:
        words: list[str] = []
        while len(words) < train_per_length + test_per_length:
            word = random_word(rng, length)
            if word not in words:
                words.append(word)
        for split, chosen in (("test", words[:test_per_length]), ("train", words[test_per_length:])):
            splits[split].extend(make_item(word, int(rng.integers(len(TEMPLATES)))) for word in chosen)
    return splits


_FONTS: dict[int, ImageFont.FreeTypeFont | ImageFont.ImageFont] = {}


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if size not in _FONTS:
        _FONTS[size] = ImageFont.load_default(size=size)
    return _FONTS[size]


@functools.lru_cache(maxsize=8192)
def _fitting_size(text: str, side: int, stroke: int) -> int:
    """The largest font size at which ``text`` spans at most TEXT_WIDTH of ``side`` (and 0.6 of its height)."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    size = int(side * 0.6)
    for size in range(int(side * 0.6), 4, -2):
        left, top, right, bottom = draw.textbbox((0, 0), text, font=_font(size), stroke_width=stroke)
        if right - left <= TEXT_WIDTH * side and bottom - top <= 0.6 * side:
            break
    return size


def draw_text(
    text: str,
    image_size: int = 64,
    offset: tuple[float, float] = (0.0, 0.0),
    background: tuple[int, int, int] = (236, 234, 226),
    ink: tuple[int, int, int] = (20, 20, 24),
) -> np.ndarray:
    """``text`` centred (plus ``offset`` px), as wide as :data:`TEXT_WIDTH` of the image. uint8 [H, W, 3]."""
    factor = 4  # draw large and downsample: smooth, legible strokes
    side = image_size * factor
    canvas = Image.new("RGB", (side, side), background)
    draw = ImageDraw.Draw(canvas)
    stroke = max(1, side // 64)
    font = _font(_fitting_size(text, side, stroke))
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font, stroke_width=stroke)
    x = (side - (right - left)) / 2 - left + offset[0] * factor
    y = (side - (bottom - top)) / 2 - top + offset[1] * factor
    draw.text((x, y), text, font=font, fill=ink, stroke_width=stroke, stroke_fill=ink)
    return np.array(canvas.resize((image_size, image_size), Image.Resampling.BOX))


class TextTask:
    """The text-rendering task (see the module docstring)."""

    name = "text"
    reward_name = "ocr"

    def __init__(self, image_size: int = 64) -> None:
        self.image_size = image_size
        self._test_words: set[str] | None = None

    def prompts(self, split: str) -> list[PromptItem]:
        return load_prompts(prompt_file(self.name, split))

    def render(self, item: PromptItem, rng: np.random.Generator) -> np.ndarray:
        jitter = self.image_size / 16
        offset = (float(rng.uniform(-jitter, jitter)), float(rng.uniform(-jitter, jitter)))
        light, dark = rng.integers(215, 250, size=3), rng.integers(0, 60, size=3)
        background = (int(light[0]), int(light[1]), int(light[2]))
        ink = (int(dark[0]), int(dark[1]), int(dark[2]))
        return draw_text(item.metadata["text"], self.image_size, offset, background, ink)

    def sample_items(self, rng: np.random.Generator, n: int) -> list[PromptItem]:
        if self._test_words is None:
            self._test_words = {item.metadata["text"] for item in self.prompts("test")}
        items: list[PromptItem] = []
        while len(items) < n:
            word = random_word(rng, int(rng.choice(LENGTHS)))
            if word not in self._test_words:
                items.append(make_item(word, int(rng.integers(len(TEMPLATES)))))
        return items

    def evaluate(self, images: torch.Tensor, items: list[PromptItem]) -> dict[str, float]:
        """ "accuracy": exact reading (case and spaces ignored); "score": mean OCR reward."""
        from vgpo.rewards.ocr import get_engine, normalise_text, text_score

        readings = get_engine().read(list(images_to_uint8(images)))
        targets = [item.metadata["text"] for item in items]
        passed = [normalise_text(r) == normalise_text(t) for r, t in zip(readings, targets, strict=True)]
        scores = [text_score(r, t) for r, t in zip(readings, targets, strict=True)]
        return summarise_accuracy(passed, scores, [item.metadata["category"] for item in items])
