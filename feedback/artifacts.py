"""Checksums of trained artifacts, so serving can prove it loads exactly what was approved."""

from __future__ import annotations

import hashlib
from pathlib import Path


def directory_checksum(folder: Path | str) -> str:
    """sha256 over every file's relative path and bytes, in a stable order."""
    folder = Path(folder)
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"{folder} holds no files")
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()
