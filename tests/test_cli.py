"""The `vgpo` entry point: a command whose module fails to import stops the CLI with the module and the cause
named (it used to vanish from the command list)."""

import pytest

import vgpo.cli
import vgpo.commands


def test_a_command_that_fails_to_import_is_named_with_its_error(tmp_path, monkeypatch):
    (tmp_path / "broken.py").write_text("import not_a_real_dependency_of_vgpo\n")
    monkeypatch.setattr(vgpo.commands, "__path__", [*vgpo.commands.__path__, str(tmp_path)])
    monkeypatch.setattr(vgpo.cli, "COMMAND_MODULES", (*vgpo.cli.COMMAND_MODULES, "broken"))
    with pytest.raises(ImportError, match=r"'broken' cannot be loaded: importing vgpo.commands.broken failed") as error:
        vgpo.cli.main(["--help"])
    assert "No module named 'not_a_real_dependency_of_vgpo'" in str(error.value)


def test_a_missing_command_module_is_not_skipped(monkeypatch):
    monkeypatch.setattr(vgpo.cli, "COMMAND_MODULES", ("train", "no_such_command"))
    with pytest.raises(ImportError, match=r"importing vgpo\.commands\.no_such_command failed with ModuleNotFoundError"):
        vgpo.cli.build_parser()


def test_every_command_loads():
    parser = vgpo.cli.build_parser()
    choices = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(choices) >= {"train", "eval", "sample", "pretrain", "presets", "serve-reward", "study", "bench"}
