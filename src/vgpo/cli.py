"""The `vgpo` command line: one sub-command per module in `vgpo.commands`.

Each command module exposes ``register(subparsers)`` which adds its parser and sets ``func`` to a callable
taking the parsed arguments and returning an exit code. Errors meant for users are :class:`vgpo.errors.VgpoError`
and are printed without a traceback, as are OSErrors (a path the user gave that cannot be read or written).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from vgpo.errors import VgpoError, os_error_message

COMMAND_MODULES = (
    "train",
    "eval",
    "sample",
    "pretrain",
    "export",
    "bench",
    "study",
    "tune",
    "prompts",
    "convert_weights",
    "serve_reward",
    "presets",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vgpo",
        description="Align flow-matching text-to-image models with VGPO or Flow-GRPO.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module_name = f"vgpo.commands.{name}"
        try:
            module = importlib.import_module(module_name)
        except Exception as error:  # a broken command must never vanish from the CLI silently
            raise ImportError(
                f"vgpo: the command {name!r} cannot be loaded: importing {module_name} failed with "
                f"{type(error).__name__}: {error} (a broken install or a missing dependency; "
                "`pip install -e .` reinstalls the dependencies)"
            ) from error
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except VgpoError as error:
        print(f"vgpo {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a path the user gave: unreadable, read-only, a file for a folder, a full disk
        print(f"vgpo {args.command}: error: {os_error_message(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
