"""SHA-256 checksums of the files a checkpoint or a model folder writes, verified when they are read.

A checkpoint whose bytes changed after it was written (a bit flip, a zeroed block, a copy cut short) can still
parse as safetensors and load without complaint; its recorded checksum is what tells. Writers record
``{file name: hex digest}`` in their JSON metadata (``checkpoint.json``'s or the tiny model's ``config.json``'s
``"sha256"``); readers verify a file whose name is recorded and accept folders written before checksums were.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from vgpo.errors import CheckpointError

CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def record(folder: Path, names: Iterable[str]) -> dict[str, str]:
    """``{name: sha256}`` of the files ``names`` in ``folder`` (for the folder's metadata JSON)."""
    return {name: file_sha256(folder / name) for name in names}


def verify(path: Path, recorded: dict[str, str] | None, fix: str) -> None:
    """Raise CheckpointError, naming the file and ``fix``, when ``path``'s bytes differ from its recorded checksum.
    A file with no recorded checksum (``recorded`` None, or its name absent: an older writer) passes."""
    if not recorded or path.name not in recorded:
        return
    actual = file_sha256(path)
    if actual != recorded[path.name]:
        raise CheckpointError(
            f"{path} is corrupt: its SHA-256 is {actual[:16]}..., but {recorded[path.name][:16]}... was recorded "
            f"when it was written (the file changed on disk: a bad copy, a disk error); {fix}"
        )
