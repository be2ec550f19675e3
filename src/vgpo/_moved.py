"""Old import paths of modules that moved: each keeps working for one release, with a DeprecationWarning that
names the new path (docs/extending.md lists the public names that stay put)."""

from __future__ import annotations

import importlib
import sys
import warnings
from types import ModuleType

REMOVED_IN = "0.3"
"""The release that drops the old paths (they were kept through 0.2)."""


def warn_moved(old: str, new: str) -> None:
    """Warn that module ``old`` is now ``new`` (stacklevel: the importing line, past importlib's frames)."""
    warnings.warn(
        f"{old} moved to {new}; import it from there ({old} goes in vgpo {REMOVED_IN})",
        DeprecationWarning,
        stacklevel=3,
    )


def alias_module(old: str, new: str) -> ModuleType:
    """Make ``import old`` give module ``new`` itself (so attributes, private names and monkeypatching of either
    path reach the same object), with a DeprecationWarning. Call it from the old module's file."""
    warn_moved(old, new)
    module = importlib.import_module(new)
    sys.modules[old] = module
    return module
