"""A user's file-system mistakes get a named error and exit code 2, never a traceback: an output that is a file
or read-only, an unreadable config, prompt file or checkpoint (reported as permission denied, not as missing).

Tests run as root here, and root reads and writes regardless of permissions, so most tests simulate the refusal
(the OS's PermissionError, raised where vgpo opens or creates the path); the last one uses real permissions,
as a user without root or as root without the capabilities that bypass them (``setpriv``)."""

from __future__ import annotations

import builtins
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vgpo import errors
from vgpo.cli import main
from vgpo.errors import CheckpointError, ConfigError

PRESET = "run:\n  progress: false\n  tensorboard: false\n"


def refuse(monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    """Make vgpo's readability check see PermissionError for paths ending in ``suffix`` (as for mode 000)."""

    def fake_open(path, *args, **kwargs):
        if str(path).endswith(suffix):
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(errors, "open", fake_open, raising=False)


def test_out_that_is_an_existing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "preset.yaml").write_text(PRESET)
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    assert main(["train", str(tmp_path / "preset.yaml"), "--out", str(existing)]) == 2
    assert f"--out {existing} is an existing file; give a folder" in capsys.readouterr().err
    command = ["prompts", "geneval", "--out", str(existing), "--train-per-tag", "1", "--test-per-tag", "1"]
    assert main(command) == 2  # caught at the CLI's boundary
    assert f"{existing}: a file stands where a folder is needed (is --out an existing file?)" in capsys.readouterr().err
    assert existing.read_text() == "mine"


def test_read_only_output_and_run_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "preset.yaml").write_text(PRESET)
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(kwargs.get("dir")))

    monkeypatch.setattr(errors.tempfile, "TemporaryFile", read_only)
    assert main(["train", str(tmp_path / "preset.yaml"), "--out", str(run_dir)]) == 2
    assert f"--out {run_dir} cannot be written: permission denied; pick a folder you may write" in (
        capsys.readouterr().err
    )
    (run_dir / "config.yaml").write_text(PRESET)
    assert main(["train", "--resume", str(run_dir)]) == 2
    assert f"the run folder {run_dir} cannot be written: permission denied" in capsys.readouterr().err


def test_unreadable_config_and_prompt_files_are_not_reported_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from vgpo.config import load_config
    from vgpo.tasks.prompts import load_prompts

    preset, prompts = tmp_path / "preset.yaml", tmp_path / "prompts.txt"
    preset.write_text(PRESET)
    prompts.write_text("a red circle\n")
    refuse(monkeypatch, ".yaml")
    with pytest.raises(ConfigError, match=rf"permission denied: {preset}; check that you may read it"):
        load_config(preset)
    assert main(["train", str(preset), "--out", str(tmp_path / "run")]) == 2
    assert f"vgpo train: error: permission denied: {preset}" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"prompt file .* is missing"):  # a missing file is still called missing
        load_prompts(tmp_path / "absent.txt")
    refuse(monkeypatch, "prompts.txt")
    with pytest.raises(ConfigError, match=rf"permission denied: {prompts}") as error:
        load_prompts(prompts)
    assert "missing" not in str(error.value)


def test_unreadable_checkpoint_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fakes import BrightnessReward, FakePolicy, FakeTask
    from vgpo import checkpoint as ckpt
    from vgpo.config import config_from_dict
    from vgpo.trainer import Trainer

    config = config_from_dict(
        {
            "sampling": {"num_steps": 2, "group_size": 2, "prompts_per_iteration": 2, "eval_num_steps": 2},
            "optim": {"micro_batch_size": 4},
            "run": {"iterations": 1, "eval_at_start": False, "progress": False, "tensorboard": False},
        }
    )
    Trainer(config, tmp_path, policy=FakePolicy(), task=FakeTask(), reward=BrightnessReward()).run()
    folder = ckpt.checkpoint_dir(tmp_path, 1)
    refuse(monkeypatch, ckpt.TRAINABLE_FILE)
    with pytest.raises(CheckpointError, match=rf"permission denied: {folder / ckpt.TRAINABLE_FILE}"):
        ckpt.load_weights(FakePolicy(), folder)
    refuse(monkeypatch, ckpt.META_FILE)
    with pytest.raises(CheckpointError, match=rf"permission denied: {folder / ckpt.META_FILE}"):
        ckpt.read_meta(folder)


def _without_permission_bypass() -> list[str] | None:
    """A command prefix that runs without root's permission bypass, or None when none is available."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    prefix = [setpriv, "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, check=False)
    return prefix if probe.returncode == 0 else None


@pytest.mark.slow  # three CLI processes
def test_real_permissions_through_the_cli(tmp_path: Path) -> None:
    prefix = _without_permission_bypass()
    if prefix is None:
        pytest.skip("running as root without setpriv able to drop the permission bypass: nothing to deny")
    preset = tmp_path / "preset.yaml"
    preset.write_text(PRESET)
    secret = tmp_path / "secret.yaml"
    secret.write_text(PRESET)
    secret.chmod(0)
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "prompts.txt").write_text("a red circle\n")
    hidden.chmod(0)
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    cases = [
        (["train", str(secret), "--out", str(tmp_path / "a")], f"permission denied: {secret}"),
        (
            ["train", str(preset), f"task.train_prompts={hidden / 'prompts.txt'}", "--out", str(tmp_path / "b")],
            f"permission denied: {hidden / 'prompts.txt'}",
        ),
        (["train", str(preset), "--out", str(read_only)], f"--out {read_only} cannot be written: permission denied"),
    ]
    try:
        for args, message in cases:
            done = subprocess.run(
                [*prefix, sys.executable, "-m", "vgpo.cli", *args], capture_output=True, text=True, timeout=300
            )
            assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    finally:
        hidden.chmod(0o755)
        read_only.chmod(0o755)
