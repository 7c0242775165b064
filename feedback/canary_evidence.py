"""A running canary's evidence, counted from the store: every replica's answers and every user's
feedback count, and each replica that looks counts the same.

The window opens when the release last became the canary (its approval in the audit log), so
an operator who approves it again after an automatic rollback starts it on fresh evidence.
Per release: answers, failed answers, latency, thumbs, stars and what the guardrails did to the
answers; and the interleaved choices between the two releases (comparisons of kind "release").
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from feedback.canary import CanaryEvidence, ReleaseEvidence
from store.models import AnswerFailure, AuditLog, Comparison, Rating, Release, Response, Thumb, Winner

RELEASE_PAIR = "release"  # the comparison kind of an interleaved pair: canary against active
INTERVENED = {"fix", "flag", "refuse"}  # what a guardrail did to an answer ("error": it could not look)


def canary_since(session: Session, canary: Release) -> datetime:
    """When `canary` last became the canary."""
    approvals = select(AuditLog).where(AuditLog.target == f"release:{canary.name}",
                                       AuditLog.action == "release.approve")
    for entry in session.exec(approvals.order_by(col(AuditLog.id).desc())):
        if entry.details.get("to") == "canary":
            return entry.created_at
    return canary.updated_at


def collect(session: Session, canary: Release, active: Release, since: datetime) -> CanaryEvidence:
    evidence = CanaryEvidence(canary=_release(session, canary.id, since), active=_release(session, active.id, since))
    evidence.wins, evidence.losses, evidence.ties = _choices(session, canary.id, active.id, since)
    return evidence


def _release(session: Session, release_id: int, since: datetime) -> ReleaseEvidence:
    answered = select(Response).where(Response.release_id == release_id, Response.created_at >= since)
    evidence = ReleaseEvidence()
    # Counted here rather than in SQL: the decisions sit in each answer's JSON trace, which the
    # two databases query differently (as store.releases.check_outcomes does).
    for response in session.exec(answered):
        evidence.answers += 1
        evidence.latency_ms_sum += response.latency_ms
        evidence.interventions += _intervened(response.trace)
    evidence.errors = session.exec(select(func.count()).select_from(AnswerFailure).where(
        AnswerFailure.release_id == release_id, AnswerFailure.created_at >= since)).one()
    rated = (select(Rating).join(Response, col(Rating.response_id) == col(Response.id))
             .where(Response.release_id == release_id, Response.created_at >= since))
    for rating in session.exec(rated):
        evidence.thumbs_up += rating.thumb == Thumb.up
        evidence.thumbs_down += rating.thumb == Thumb.down
        if rating.stars is not None:
            evidence.stars += 1
            evidence.stars_sum += rating.stars
            evidence.stars_squares += rating.stars * rating.stars
    return evidence


def _intervened(trace: dict) -> bool:
    decisions = trace.get("plugins", {}).get("output", [])
    return any(decision.get("action") in INTERVENED for decision in decisions)


def _choices(session: Session, canary_id: int, active_id: int, since: datetime) -> tuple[int, int, int]:
    """(canary won, canary lost, ties) over the interleaved pairs answered since `since`."""
    wins = losses = ties = 0
    a, b = aliased(Response), aliased(Response)
    pairs = (select(Comparison.winner, a.release_id, b.release_id)
             .join(a, col(a.id) == col(Comparison.response_a_id)).join(b, col(b.id) == col(Comparison.response_b_id))
             .where(Comparison.kind == RELEASE_PAIR, Comparison.created_at >= since))
    for winner, release_a, release_b in session.exec(pairs):
        if {release_a, release_b} != {canary_id, active_id}:
            continue  # another canary's pair
        if winner in (Winner.tie, Winner.both_bad):
            ties += 1
        elif (winner == Winner.a) == (release_a == canary_id):
            wins += 1
        else:
            losses += 1
    return wins, losses, ties
