"""What every curation step shares: its report, and the errors that block a run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

GOLDEN_PATH = Path(__file__).parent.parent / "golden" / "golden.jsonl"
TextCheck = Callable[[str], str]
DisputeMode = Literal["drop", "downweight"]


class CurationBlocked(RuntimeError):
    """The run must not train on this data; the message says why and what to do."""


class GoldenLeak(CurationBlocked):
    """A golden (evaluation-only) prompt is in the training rows."""


@dataclass
class StepReport:
    name: str
    removed: int
    notes: dict[str, Any] = field(default_factory=dict)
    changed: int = 0  # rows kept but rewritten (scrubbing) or re-weighted
