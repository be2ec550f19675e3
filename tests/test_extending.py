"""docs/extending.md as a user's script: its code blocks, run in order in a fresh process from an empty folder,
register a model, a reward and an evaluator, and train the model on a task for one iteration; and the old import
paths of moved modules still import, with a DeprecationWarning naming the new path."""

import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def doc_script() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 4, "docs/extending.md: one block per extension (model, reward, evaluator, task + run)"
    return "\n".join(blocks)


def test_the_extension_guide_runs_as_a_users_script(tmp_path):
    script = tmp_path / "my_extensions.py"
    script.write_text(doc_script())
    # the guide must use no deprecated vgpo path (vgpo's own moved-module warnings start with "vgpo")
    command = [sys.executable, "-W", "error:vgpo:DeprecationWarning", str(script)]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"train reward 0\.\d+ eval accuracy [01]\.\d+", line), line
    assert (tmp_path / "my_extensions.py").is_file() and not (tmp_path / "runs").exists()


def test_the_old_tasks_base_path_imports_with_a_warning():
    sys.modules.pop("vgpo.tasks.base", None)
    with pytest.warns(DeprecationWarning, match=r"vgpo\.tasks\.base moved to vgpo\.tasks"):
        base = importlib.import_module("vgpo.tasks.base")
    from vgpo.tasks import Task
    from vgpo.tasks.prompts import PromptItem, load_prompts

    assert base.Task is Task and base.PromptItem is PromptItem and base.load_prompts is load_prompts


def test_the_warning_points_at_the_users_import_line(tmp_path):
    script = tmp_path / "old_user.py"
    script.write_text("import vgpo.tasks.base\n")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # shown under Python's default filters because it is attributed to __main__'s line 1
    assert f"{script}:1: DeprecationWarning: vgpo.tasks.base moved to vgpo.tasks" in result.stderr


@pytest.mark.parametrize("old", sorted(__import__("vgpo._moved", fromlist=["MOVED"]).MOVED))
def test_a_moved_modules_old_path_imports_the_new_module_with_a_warning(old):
    from vgpo._moved import MOVED

    new = importlib.import_module(MOVED[old])
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=rf"{re.escape(old)} moved to {re.escape(MOVED[old])}"):
        module = importlib.import_module(old)
    assert module is new  # one module object: attributes and monkeypatching agree under both paths
    sys.modules.pop(old, None)


def test_old_paths_name_modules_that_exist_and_no_file_shadows_them():
    from vgpo._moved import MOVED

    package = Path(importlib.import_module("vgpo").__file__).parent
    for old, new in MOVED.items():
        assert importlib.util.find_spec(new) is not None, new
        stem = old.removeprefix("vgpo.").replace(".", "/")
        assert not (package / f"{stem}.py").exists() and not (package / stem).is_dir(), old
