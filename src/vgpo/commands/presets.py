"""`vgpo presets [list]`, `vgpo presets show NAME`, `vgpo presets copy NAME DEST`: the presets shipped in the package.

A preset name (e.g. ``embedded/compositional_vgpo``) is accepted wherever a config file is, so an installed vgpo
trains from any folder: `vgpo train embedded/compositional_vgpo --out runs/demo`. Copy one out to edit it; a
preset that builds on another (``base:``) is copied with its bases beside it.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import yaml

from vgpo.errors import ConfigError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "presets",
        help="list, show or copy out the YAML presets shipped with vgpo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", nargs="?", default="list", choices=["list", "show", "copy"], help="default: list")
    parser.add_argument("name", nargs="?", help="preset name for show / copy, e.g. embedded/compositional_vgpo")
    parser.add_argument("dest", nargs="?", type=Path, help="copy: a folder, or a .yaml file name")
    parser.add_argument("--force", action="store_true", help="copy: overwrite existing files")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vgpo.presets import preset_names, presets_root

    if args.action == "list":
        root = presets_root()
        for name in preset_names():
            first = (root / f"{name}.yaml").read_text().splitlines()[:1]
            note = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
            print(f"{name:36s} {note}" if note else name)
        return 0
    if args.name is None:
        raise ConfigError(f"`vgpo presets {args.action}` needs a preset name (`vgpo presets` lists them)")
    source = _shipped(args.name)
    if args.action == "show":
        print(source.read_text(), end="")
        return 0
    if args.dest is None:
        raise ConfigError("`vgpo presets copy NAME DEST` needs DEST: a folder or a .yaml file name")
    dest = args.dest if args.dest.suffix in (".yaml", ".yml") else args.dest / source.name
    copies = [(source, dest)]
    for base in _bases(source):  # a variant's bases go beside it, under their own names
        copies.append((base, dest.parent / base.name))
    for _, target in copies:
        if target.exists() and not args.force:
            raise ConfigError(f"{target} already exists; pass --force to overwrite it")
    for origin, target in copies:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(origin, target)
        print(f"{origin.name} -> {target}")
    return 0


def _shipped(name: str) -> Path:
    """The shipped preset ``name``; a file path is not one (this command is about the packaged presets)."""
    from vgpo.presets import preset_path, unknown_preset

    path = preset_path(name)
    if path is None:
        raise unknown_preset(name)
    return path


def _bases(path: Path) -> list[Path]:
    """The chain of ``base:`` files a preset builds on, nearest first."""
    chain: list[Path] = []
    while True:
        base = (yaml.safe_load(path.read_text()) or {}).get("base")
        if not isinstance(base, str):
            return chain
        path = path.parent / base
        chain.append(path)
