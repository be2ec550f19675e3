"""The named presets shipped inside the package, and how a config argument is resolved to a file.

The YAML presets live in the repository's ``configs/`` folder (the paths the docs and tests use);
``vgpo/data/presets`` is a link to it, so a built wheel carries every preset and an installed ``vgpo`` finds
them with :mod:`importlib.resources` from any folder. A config argument is resolved in this order: an existing
file; a preset name such as ``embedded/compositional_vgpo`` (with or without ``.yaml``, with or without a leading
``configs/``); otherwise a :class:`~vgpo.errors.ConfigError` that lists the closest preset names.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from vgpo.errors import ConfigError

PRESET_SUFFIX = ".yaml"


def presets_root() -> Path:
    """The folder of the shipped presets (``vgpo/data/presets``, a link to the repository's ``configs/``)."""
    return Path(__file__).resolve().parent / "data" / "presets"


def preset_names() -> list[str]:
    """Every shipped preset as ``folder/name`` without ``.yaml``, sorted (accelerate launch configs included)."""
    root = presets_root()
    return sorted(path.relative_to(root).with_suffix("").as_posix() for path in root.rglob(f"*{PRESET_SUFFIX}"))


def preset_path(name: str) -> Path | None:
    """The shipped file of preset ``name`` (``embedded/compositional_vgpo``, ``.yaml`` and ``configs/`` optional),
    or None when there is none."""
    key = name.strip().replace("\\", "/").removeprefix("./").removeprefix("configs/").removesuffix(PRESET_SUFFIX)
    if not key or ".." in key.split("/"):
        return None
    path = presets_root() / f"{key}{PRESET_SUFFIX}"
    return path if path.is_file() else None


def resolve_config(argument: str | Path) -> Path:
    """The YAML file a config argument names: an existing path first, then a shipped preset.

    Raises ConfigError naming the closest presets when neither exists."""
    path = Path(argument)
    if path.exists():
        return path
    shipped = preset_path(str(argument))
    if shipped is not None:
        return shipped
    raise unknown_preset(str(argument))


def unknown_preset(name: str) -> ConfigError:
    """The error for a config that is neither a file nor a shipped preset, naming the closest presets."""
    names = preset_names()
    key = name.removeprefix("configs/").removesuffix(PRESET_SUFFIX)
    close = difflib.get_close_matches(key, names, n=5, cutoff=0.5) or [
        known for known in names if Path(known).name.startswith(Path(key).name[:4])
    ]
    hint = f"; the closest presets: {', '.join(close)}" if close else ""
    return ConfigError(
        f"config file {name!r} not found: it is neither a file nor a shipped preset{hint} "
        "(`vgpo presets` lists them all)"
    )
