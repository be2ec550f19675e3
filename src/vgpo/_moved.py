"""Old import paths of modules that moved: each keeps working for one release, with a DeprecationWarning that
names the new path (docs/extending.md lists the public names that stay put)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from types import FrameType, ModuleType
from typing import Any

REMOVED_IN = "0.3"
"""The release that drops the old paths (they were kept through 0.2)."""


def warn_moved(old: str, new: str) -> None:
    """Warn that module ``old`` is now ``new``, attributed to the user's importing line (past importlib's and
    vgpo's own frames), so that Python's default filters show it when that line is in ``__main__``."""
    warnings.warn(
        f"{old} moved to {new}; import it from there ({old} goes in vgpo {REMOVED_IN})",
        DeprecationWarning,
        stacklevel=_importer_stacklevel(),
    )


def _importer_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside importlib and the vgpo package, counted from warn_moved
    (``warnings.warn`` itself passes over importlib's frames without counting them)."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame: FrameType | None = sys._getframe(2)  # the caller of warn_moved
    level = 2
    while frame is not None:
        name = frame.f_code.co_filename
        if "importlib" in name and "_bootstrap" in name:  # not counted by warnings.warn
            frame = frame.f_back
            continue
        if not os.path.abspath(name).startswith(package + os.sep):
            return level
        frame, level = frame.f_back, level + 1
    return 2


def alias_module(old: str, new: str) -> ModuleType:
    """Make ``import old`` give module ``new`` itself (so attributes, private names and monkeypatching of either
    path reach the same object), with a DeprecationWarning. Call it from the old module's file."""
    warn_moved(old, new)
    module = importlib.import_module(new)
    sys.modules[old] = module
    return module


MOVED: dict[str, str] = {
    "vgpo.study": "vgpo.experiments.study",
    "vgpo.study_plots": "vgpo.experiments.study_plots",
    "vgpo.report": "vgpo.experiments.report",
    "vgpo.loggers": "vgpo.experiments.loggers",
    "vgpo.quality_suite": "vgpo.experiments.quality_comparison",
    "vgpo.distributed": "vgpo.parallel.distributed",
    "vgpo.sharding": "vgpo.parallel.sharding",
    "vgpo.pretrain": "vgpo.models.tiny_pretraining",
    "vgpo.diagnostics": "vgpo.math.tcrm_diagnostics",
    "vgpo.quality": "vgpo.scoring.image_statistics",
}
"""Old module path -> new, for the modules regrouped into folders by role in 0.2 (kept through 0.2)."""


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old path of :data:`MOVED` to the new module itself, with a DeprecationWarning: one table
    instead of a shim file per moved module. Installed last on ``sys.meta_path`` by ``vgpo/__init__.py``, so it
    only answers names no file provides."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warn_moved(spec.name, MOVED[spec.name])
        return importlib.import_module(MOVED[spec.name])  # its own __name__ and __spec__ are kept

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the new module is already imported."""


def install() -> None:
    """Add the finder to ``sys.meta_path`` once."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
