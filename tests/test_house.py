"""The package keeps one copy of each thing: checks on the source tree that fail when a second copy appears."""

import re
from pathlib import Path

import numpy as np
import torch

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vgpo"

# a float -> uint8 image conversion written inline: "* 255" (or .mul(255)) on the same line as a round/uint8 cast
INLINE_UINT8 = re.compile(r"(\*\s*255|\.mul\(255).*(round|uint8)")


def test_one_image_to_uint8_converter():
    inline = [
        f"{path.relative_to(PACKAGE)}:{number}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "images.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if INLINE_UINT8.search(line)
    ]
    assert inline == [], f"use vgpo.scoring.images.images_to_uint8 instead of: {inline}"


def test_the_converters_that_use_it_round_like_it(tmp_path):
    from PIL import Image

    from vgpo.commands.sample import save_png
    from vgpo.scoring.images import images_to_uint8

    # 0.5/255 rounds half to even (0), 1.5/255 to 2, 1.0 to 255, out-of-range values clip
    image = torch.tensor([0.5 / 255, 1.5 / 255, 1.0, 1.7, -0.2, 0.25], dtype=torch.float32).reshape(1, 3, 1, 2)
    expected = images_to_uint8(image)[0]
    assert expected.reshape(-1).tolist() == [
        0,
        255,
        0,
        2,
        255,
        64,
    ]  # [H, W, 3]: pixel (0,0) = (0.5/255, 1, -0.2), then (1.5/255, 1.7, 0.25)
    save_png(image[0], tmp_path / "one.png")
    assert (np.array(Image.open(tmp_path / "one.png")) == expected).all()


def _occurrences(pattern: str) -> list[str]:
    return [
        f"{path.relative_to(PACKAGE)}:{number}"
        for path in PACKAGE.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(pattern, line)
    ]


def test_one_evaluation_set_up_for_the_trainer_and_vgpo_eval():
    # the seed offset is written once, and only the shared Evaluation calls evaluate_policy
    assert [hit.split(":")[0] for hit in _occurrences(r"\b12345\b")] == ["evaluation.py"]
    assert [hit.split(":")[0] for hit in _occurrences(r"\bevaluate_policy\(")] == ["evaluation.py", "evaluation.py"]
    users = {hit.split(":")[0] for hit in _occurrences(r"build_evaluation\(")}
    assert users == {"builders.py", "trainer.py", "commands/eval.py"}


def test_build_evaluation_reads_the_eval_settings():
    from vgpo.builders import build_evaluation, build_task
    from vgpo.config import load_config
    from vgpo.evaluation import EVAL_SEED_OFFSET

    config = load_config(
        None,
        [
            "run.seed=7",
            "sampling.eval_max_prompts=3",
            "sampling.eval_num_steps=4",
            "sampling.eval_samples_per_prompt=2",
        ],
    )
    evaluation = build_evaluation(config, build_task(config.task))
    assert (evaluation.seed, len(evaluation.items), evaluation.num_steps, evaluation.samples_per_prompt) == (
        7 + EVAL_SEED_OFFSET,
        3,
        4,
        2,
    )
    assert evaluation.reward is None  # the default task's reward is its own score: the evaluator reports it


def test_the_random_sd3_pipelines_are_not_installed():
    # a fixture of the tests and benchmarks: it lives in tests/, and nothing in the package imports it
    assert not (PACKAGE / "models" / "sd3_random.py").exists()
    assert (PACKAGE.parents[1] / "tests" / "sd3_random.py").is_file()
    assert _occurrences(r"sd3_random") == []


def test_the_readme_map_names_every_folder_of_the_package():
    readme = (PACKAGE.parents[1] / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    folders = sorted(path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__")
    missing = [name for name in folders if f"src/vgpo/{name}/" not in layout]
    assert missing == [], f"README's Layout lacks {missing}"
