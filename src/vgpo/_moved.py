"""Old import paths of modules that moved: each keeps working for one release, with a DeprecationWarning that
names the new path (docs/extending.md lists the public names that stay put)."""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from types import FrameType, ModuleType

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
