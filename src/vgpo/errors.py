"""Errors meant for users: the message names the cause and the fix; the CLI prints it without a traceback.

The helpers below turn a user's file-system mistakes (a missing or unreadable file, an output folder that is a
file or read-only) into such errors, naming the path and what is wrong with it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path


class VgpoError(Exception):
    """Base class of every error vgpo raises for bad input (config, files, rewards, checkpoints)."""


class ConfigError(VgpoError, ValueError):
    """A configuration value, key or preset is invalid."""


class RewardError(VgpoError, RuntimeError):
    """A reward function returned something unusable (NaN, wrong count) or its server failed."""


class TrainingError(VgpoError, RuntimeError):
    """The training itself went wrong (e.g. the update left non-finite weights)."""


class CheckpointError(VgpoError, RuntimeError):
    """A checkpoint is missing, corrupt, or belongs to another model."""


def os_error_message(error: OSError) -> str:
    """What an OSError from a user's path means, naming the path: permission denied is never "no such file"."""
    path = error.filename if error.filename is not None else "a path"
    if isinstance(error, PermissionError):
        return (
            f"permission denied: {path}; check that you may read it (and write it, for an output) and search "
            "every folder above it (`ls -ld`), or pick another path"
        )
    if isinstance(error, FileExistsError | NotADirectoryError):
        return f"{path}: a file stands where a folder is needed (is --out an existing file?); pick another path"
    if isinstance(error, IsADirectoryError):
        return f"{path} is a folder where a file is needed"
    if isinstance(error, FileNotFoundError):
        return f"no such file or folder: {path}"
    return f"{error.strerror or error} ({path})"


def require_file(path: str | Path, missing: str, error_class: type[VgpoError] = ConfigError) -> None:
    """Raise ``error_class(missing)`` when ``path`` is not a file, or one naming the permission when it exists
    but cannot be read (opened to tell: ``Path.is_file`` reports an unreachable file as absent on some Pythons,
    and ``os.access`` says yes to root)."""
    try:
        with open(path, "rb"):
            pass
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise error_class(missing) from None
    except OSError as error:
        raise error_class(os_error_message(error)) from None


def require_writable_folder(path: Path, what: str) -> None:
    """Create folder ``path`` (and its parents) and check a file can be written in it; raise ConfigError naming
    ``what`` (e.g. "--out") when it is a file or not writable, before any slow work starts."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is an existing file; give a folder (new or existing) instead")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except PermissionError:
        raise ConfigError(
            f"{what} {path} cannot be written: permission denied; pick a folder you may write, or fix its "
            f"permissions (`ls -ld {path}`)"
        ) from None
    except OSError as error:
        raise ConfigError(f"{what} {path} cannot be written: {os_error_message(error)}") from None
