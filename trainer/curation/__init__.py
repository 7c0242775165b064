"""Curation: small steps over the rows `feedback/export.py` builds, each returning
`(kept_rows, StepReport)`, and `curate` chaining them into one `CurationReport`.

Order in `curate` (each step sees the previous one's output):
  scrub personal data -> agreement (floor check, disputes dropped or down-weighted)
  -> duplicates -> per-user cap -> golden prompts dropped -> replay of earlier rows -> golden again.
Agreement comes before de-duplication because two people's identical judgments of one item
are exact duplicates, and they are exactly what agreement is measured on.

Row has no free metadata field, so a down-weighted row carries its weight in
`row.data["weight"]` (every row gets one when any weight is set, so the column is whole).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from feedback.export import Row
from trainer.curation.agreement import (
    AgreementResult,
    Dispute,
    KindAgreement,
    agreement,
    check_agreement_floor,
    judgment,
    resolve_disputes,
)
from trainer.curation.base import CurationBlocked, DisputeMode, GoldenLeak, StepReport
from trainer.curation.caps import cap_per_user
from trainer.curation.duplicates import drop_duplicates
from trainer.curation.golden import GoldenItem, add_replay, assert_no_golden, drop_golden, golden_set
from trainer.curation.personal_data import default_output_check, default_redactor, scrub_personal_data

__all__ = ["AgreementResult", "CurationBlocked", "CurationConfig", "CurationReport", "Dispute", "GoldenItem",
           "GoldenLeak", "KindAgreement", "StepReport", "add_replay", "agreement", "assert_no_golden",
           "cap_per_user", "check_agreement_floor", "curate", "default_output_check", "default_redactor",
           "drop_duplicates", "drop_golden", "golden_set", "judgment", "resolve_disputes", "scrub_personal_data"]


@dataclass
class CurationConfig:
    near_threshold: float = 0.9  # trigram Jaccard at or above which two rows are near duplicates
    max_user_share: float = 0.2  # no user in more than this share of the rows
    agreement_floor: float = 0.4  # Krippendorff's alpha below this blocks the run ...
    min_shared_items: int = 20  # ... when at least this many items were judged by two or more people
    dispute_mode: DisputeMode = "drop"
    replay_share: float = 0.0  # share of the result drawn from earlier rows
    seed: int = 0
    golden_path: Path | None = None  # None: the bundled golden set
    scrub: bool = True


@dataclass
class CurationReport:
    rows_in: int
    rows_out: int = 0
    steps: list[StepReport] = field(default_factory=list)
    agreement: AgreementResult | None = None

    def removed(self) -> dict[str, int]:
        return {step.name: step.removed for step in self.steps}

    def lines(self) -> list[str]:
        out = [f"rows in: {self.rows_in}"]
        for step in self.steps:
            extra = f", {step.changed} changed" if step.changed else ""
            out.append(f"{step.name}: {step.removed} removed{extra} {step.notes or ''}".rstrip())
        out.append(f"rows out: {self.rows_out}")
        return out


def curate(rows: Sequence[Row], config: CurationConfig | None = None, earlier_rows: Sequence[Row] = (),
           check: Any = None) -> tuple[list[Row], CurationReport]:
    """The steps in order (see the module docstring); raises `CurationBlocked` when agreement
    is under the floor on enough shared items. Rows asking a golden prompt are dropped and counted."""
    config = config or CurationConfig()
    report = CurationReport(rows_in=len(rows))
    current = list(rows)

    def step(result: tuple[list[Row], StepReport]) -> None:
        nonlocal current
        current, step_report = result
        report.steps.append(step_report)

    if config.scrub:
        step(scrub_personal_data(current, check))
    report.agreement = agreement(current)
    for kind in report.agreement.by_kind.values():
        check_agreement_floor(kind.alpha, config.agreement_floor, kind.items, config.min_shared_items, kind.kind)
    step(resolve_disputes(current, config.dispute_mode, report.agreement))
    step(drop_duplicates(current, config.near_threshold))
    step(cap_per_user(current, config.max_user_share))
    golden = golden_set(config.golden_path)
    step(drop_golden(current, golden))
    if config.replay_share:
        step(add_replay(current, earlier_rows, config.replay_share, config.seed))
        kept, golden_report = drop_golden(current, golden)
        step((kept, replace(golden_report, name="golden_in_replay")))
    report.rows_out = len(current)
    return current, report
