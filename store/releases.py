"""The release life cycle. The CLI, the HTTP API and Slack all move releases through here.

    training -> candidate -(approve)-> canary -(promote)-> active -> retired
        |           `-(reject)-> rejected   `-(rollback)-> rolled_back
        `-(gate fails)-> failed_gate

The database is the source of truth: serving replicas follow what these functions write.
Every change is in the audit log with the user who made it.
Here too: which release is active or canary, the report's share key, and what the plugins'
checks decided on a release's answers.
"""

from __future__ import annotations

import secrets
from typing import Any

from sqlmodel import Session, col, select

from store import audit
from store.errors import Conflict, NotFound
from store.models import Release, ReleaseState, Response, User, utcnow


class ReleaseError(Conflict, ValueError):
    """A release action that does not fit the release's state; the message says why."""


class ReleaseNotFound(NotFound):
    pass


def active_release(session: Session) -> Release | None:
    return session.exec(select(Release).where(Release.state == ReleaseState.active)).first()


def canary_release(session: Session) -> Release | None:
    return session.exec(select(Release).where(Release.state == ReleaseState.canary)).first()


def ensure_base_release(session: Session, *, base_model: str) -> Release:
    """With no active release yet, the base model itself is release `base`."""
    release = active_release(session)
    if release is None:
        release = session.exec(select(Release).where(Release.name == "base")).first()
    if release is None:
        release = Release(name="base", base_model=base_model, state=ReleaseState.active)
        session.add(release)
        session.flush()
        audit.record(session, actor=None, action="release.create", target=f"release:{release.name}",
                     details={"base_model": base_model})
    return release


def get(session: Session, name: str) -> Release:
    release = session.exec(select(Release).where(Release.name == name)).first()
    if release is None:
        raise ReleaseNotFound(f"no release named {name!r}")
    return release


def listing(session: Session) -> list[Release]:
    return list(session.exec(select(Release).order_by(col(Release.id).desc())))


def _move(session: Session, release: Release, state: ReleaseState, actor: User | None, action: str, **details) -> None:
    before = release.state
    release.state, release.updated_at = state, utcnow()
    session.add(release)
    session.flush()
    audit.record(session, actor=actor, action=action, target=f"release:{release.name}",
                 details={"from": before.value, "to": state.value, **details})


def _require(release: Release, *states: ReleaseState) -> None:
    if release.state not in states:
        allowed = " or ".join(s.value for s in states)
        raise ReleaseError(f"release {release.name!r} is {release.state.value}; this needs it {allowed}")


def approve(session: Session, name: str, actor: User | None, canary: float | None = None) -> Release:
    """Approve a candidate: straight to active, or as a canary on `canary` of conversations. A
    rolled-back release may be approved again: how an operator undoes an automatic rollback."""
    release = get(session, name)
    _require(release, ReleaseState.candidate, ReleaseState.rolled_back)
    if canary is None or canary >= 1.0:
        _make_active(session, release, actor, "release.approve")
        return release
    if not 0.0 < canary < 1.0:
        raise ReleaseError("a canary share must be between 0 and 1, such as 0.2")
    running = canary_release(session)
    if running is not None:
        raise ReleaseError(f"release {running.name!r} is already the canary; promote or roll it back first")
    release.canary_share = canary
    _move(session, release, ReleaseState.canary, actor, "release.approve", canary=canary)
    return release


def reject(session: Session, name: str, actor: User | None, reason: str = "") -> Release:
    release = get(session, name)
    _require(release, ReleaseState.candidate)
    _move(session, release, ReleaseState.rejected, actor, "release.reject", reason=reason)
    return release


def promote(session: Session, actor: User | None) -> Release:
    """The canary becomes the active release for everyone."""
    release = canary_release(session)
    if release is None:
        raise ReleaseError("there is no canary to promote")
    _make_active(session, release, actor, "release.promote")
    return release


def rollback(session: Session, actor: User | None, reason: str = "") -> Release:
    """End the canary if there is one; otherwise go back to the previously active release."""
    canary = canary_release(session)
    if canary is not None:
        canary.canary_share = 0.0
        _move(session, canary, ReleaseState.rolled_back, actor, "release.rollback", reason=reason)
        return canary
    active = active_release(session)
    previous = session.exec(
        select(Release).where(Release.state == ReleaseState.retired).order_by(col(Release.updated_at).desc())
    ).first()
    if active is None or previous is None:
        raise ReleaseError("nothing to roll back to: no canary and no earlier active release")
    _move(session, active, ReleaseState.rolled_back, actor, "release.rollback", reason=reason)
    _move(session, previous, ReleaseState.active, actor, "release.restore", replaces=active.name)
    return previous


def _make_active(session: Session, release: Release, actor: User | None, action: str) -> None:
    current = active_release(session)
    if current is not None and current.id != release.id:
        _move(session, current, ReleaseState.retired, actor, "release.retire", replaced_by=release.name)
    release.canary_share = 0.0
    _move(session, release, ReleaseState.active, actor, action)


REPORT_KEY = "share_key"


def share_report(session: Session, *, release: Release) -> str:
    """A key that opens the release's report page without a token, for a link posted where
    only operators read (the Slack operators' channel). Made once, kept in the report."""
    if not release.report.get(REPORT_KEY):
        release.report = {**release.report, REPORT_KEY: secrets.token_urlsafe(24)}
        session.add(release)
        session.flush()
    return release.report[REPORT_KEY]


def check_outcomes(session: Session, *, release_id: int) -> dict[str, Any]:
    """What the plugins' checks decided on a release's answers and their prompts, counted:
    answers seen, decisions by plugin and action, and by reason (such as "pii.card").

    Read from each response's trace; counted here rather than in SQL because the two
    databases query JSON differently and a release's answers fit in memory."""
    traces = session.exec(select(Response.trace).where(Response.release_id == release_id)).all()
    by_plugin: dict[str, dict[str, int]] = {}
    reasons: dict[str, int] = {}
    for trace in traces:
        for decision in [*trace.get("plugins", {}).get("input", []), *trace.get("plugins", {}).get("output", [])]:
            actions = by_plugin.setdefault(decision["plugin"], {})
            actions[decision["action"]] = actions.get(decision["action"], 0) + 1
            for reason in decision.get("reasons") or []:
                reasons[reason] = reasons.get(reason, 0) + 1
    return {"responses": len(traces), "by_plugin": by_plugin, "reasons": reasons}
