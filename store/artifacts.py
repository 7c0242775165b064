"""Trained artifacts: checksums, so serving can prove it loads exactly what was approved, and
where each release keeps its files."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from store.models import Release


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


REWARD_FOLDER = "reward"  # beside a release's adapter folder: <release folder>/reward


def reward_dir_for(release: Release) -> Path | None:
    """Where a release's reward model lives (adapter files and reward.json): the folder
    `reward` beside the release's adapter. None for a release without an adapter (base)."""
    if not release.adapter_path:
        return None
    return Path(release.adapter_path).parent / REWARD_FOLDER
