"""Presets shipped in the package: name resolution, `vgpo presets`, and (slow) a built wheel installed into a
fresh virtual environment outside the repository that trains from a preset name."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from vgpo.cli import main
from vgpo.config import load_config
from vgpo.errors import ConfigError
from vgpo.presets import preset_names, preset_path, presets_root, resolve_config

REPO = Path(__file__).resolve().parents[1]


def test_every_repository_config_is_a_shipped_preset():
    in_repo = sorted(
        p.relative_to(REPO / "configs").with_suffix("").as_posix() for p in (REPO / "configs").rglob("*.yaml")
    )
    assert preset_names() == in_repo
    assert {"embedded/compositional_vgpo", "sd3/geneval_kl", "flux/geneval_kl", "wan/pickscore_kl"} <= set(in_repo)
    assert {name.split("/")[0] for name in in_repo} == {
        "accelerate", "embedded", "flux", "qwen_image", "sd3", "sd3_large", "wan"
    }  # fmt: skip


@pytest.mark.parametrize(
    "name", ["embedded/compositional_vgpo", "embedded/compositional_vgpo.yaml", "configs/embedded/compositional_vgpo"]
)
def test_preset_name_resolves_from_any_folder(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here: the name must come from the package
    path = resolve_config(name)
    assert path == presets_root() / "embedded" / "compositional_vgpo.yaml"
    assert load_config(name).algorithm.method == "vgpo"


def test_an_existing_file_wins_over_a_preset_of_the_same_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    own = tmp_path / "embedded" / "compositional_vgpo.yaml"
    own.parent.mkdir()
    own.write_text("algorithm:\n  method: flow_grpo\n")
    assert resolve_config("embedded/compositional_vgpo.yaml") == Path("embedded/compositional_vgpo.yaml")
    assert load_config("embedded/compositional_vgpo.yaml").algorithm.method == "flow_grpo"


def test_an_unknown_name_lists_the_closest_presets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ConfigError, match=r"'embeded/compositional_vgp' not found.*closest presets: embedded/compositional_vgpo"
    ):
        resolve_config("embeded/compositional_vgp")
    assert preset_path("../embedded/compositional_vgpo") is None  # names stay inside the preset folder


def test_presets_command_lists_shows_and_copies_with_bases(tmp_path, capsys):
    assert main(["presets"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == preset_names()
    assert main(["presets", "show", "sd3/ocr_kl_8gpu"]) == 0
    assert "base: ocr_kl.yaml" in capsys.readouterr().out
    assert main(["presets", "copy", "sd3/ocr_kl_8gpu", str(tmp_path / "mine")]) == 0
    copied = sorted(p.name for p in (tmp_path / "mine").iterdir())
    assert copied == ["ocr_kl.yaml", "ocr_kl_8gpu.yaml"]  # the variant and the base it names
    assert load_config(tmp_path / "mine" / "ocr_kl_8gpu.yaml") == load_config("sd3/ocr_kl_8gpu")
    assert main(["presets", "copy", "sd3/ocr_kl_8gpu", str(tmp_path / "mine")]) == 2  # no silent overwrite
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main(["presets", "copy", "sd3/ocr_kl_8gpu", str(tmp_path / "mine"), "--force"]) == 0
    assert main(["presets", "show", "sd3/nope"]) == 2
    assert "closest presets" in capsys.readouterr().err


@pytest.mark.slow
def test_installed_wheel_trains_from_a_preset_name_outside_the_repository(tmp_path):
    """Build the wheel, install it (without dependencies) into a fresh venv whose only other packages are this
    interpreter's site-packages (reached through a .pth path, which does not run this venv's editable-install
    hooks), and train from a preset name in a folder with no configs/."""
    source = tmp_path / "source"  # built from a copy, so that the build leaves nothing in the checkout
    source.mkdir()
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / part, source / part)
    skip = shutil.ignore_patterns("*.egg-info", "__pycache__")
    for folder in ("src", "configs"):  # links kept: vgpo/data/presets -> ../../../configs resolves in the copy
        shutil.copytree(REPO / folder, source / folder, symlinks=True, ignore=skip)
    wheels = tmp_path / "wheels"
    build = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        str(source),
        "-w",
        str(wheels),
    ]
    subprocess.run(build, check=True, cwd=tmp_path, timeout=600)
    (wheel,) = wheels.glob("vgpo-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    own_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    ).stdout.strip()
    install = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "-q",
        "--no-deps",
        "--no-index",
        "--ignore-installed",
        str(wheel),
    ]
    subprocess.run(install, check=True, timeout=300)
    # the dependencies only after the install, so that pip does not take the editable vgpo there as installed
    Path(own_site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run(
        [python, "-c", "import vgpo; print(vgpo.__file__)"], cwd=work, env=env, capture_output=True, text=True
    )
    assert where.stdout.startswith(own_site), where  # the wheel's vgpo, not the repository's
    quick = [
        "sampling.num_steps=2", "sampling.group_size=2", "sampling.prompts_per_iteration=2",
        "sampling.eval_num_steps=2", "sampling.eval_samples_per_prompt=2", "sampling.eval_max_prompts=2",
        "run.iterations=1", "run.progress=false", "run.tensorboard=false", "run.num_threads=1",
    ]  # fmt: skip
    train = [venv / "bin" / "vgpo", "train", "embedded/compositional_vgpo", *quick, "--out", "run"]
    result = subprocess.run(train, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert (work / "run" / "metrics.jsonl").is_file() and (work / "run" / "config.yaml").is_file()
    listed = subprocess.run([venv / "bin" / "vgpo", "presets"], cwd=work, env=env, capture_output=True, text=True)
    assert "wan/pickscore_kl" in listed.stdout and "accelerate/1node_8gpu_fsdp" in listed.stdout
