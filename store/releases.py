"""The release life cycle. The CLI, the HTTP API and Slack all move releases through here.

    training -> candidate -(approve)-> canary -(promote)-> active -> retired
        |           `-(reject)-> rejected   `-(rollback)-> rolled_back
        `-(gate fails)-> failed_gate

The database is the source of truth: serving replicas follow what these functions write.
Every change is in the audit log with the user who made it.
"""

from __future__ import annotations

from sqlmodel import Session, col, select

from feedback import crud
from store.models import Release, ReleaseState, User, utcnow


class ReleaseError(ValueError):
    """A release action that does not fit the release's state; the message says why."""


class ReleaseNotFound(LookupError):
    pass


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
    crud.audit(session, actor, action, f"release:{release.name}", {"from": before.value, "to": state.value, **details})


def _require(release: Release, *states: ReleaseState) -> None:
    if release.state not in states:
        allowed = " or ".join(s.value for s in states)
        raise ReleaseError(f"release {release.name!r} is {release.state.value}; this needs it {allowed}")


def approve(session: Session, name: str, actor: User | None, canary: float | None = None) -> Release:
    """Approve a candidate: straight to active, or as a canary on `canary` of conversations."""
    release = get(session, name)
    _require(release, ReleaseState.candidate)
    if canary is None or canary >= 1.0:
        _make_active(session, release, actor, "release.approve")
        return release
    if not 0.0 < canary < 1.0:
        raise ReleaseError("a canary share must be between 0 and 1, such as 0.2")
    running = crud.canary_release(session)
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
    release = crud.canary_release(session)
    if release is None:
        raise ReleaseError("there is no canary to promote")
    _make_active(session, release, actor, "release.promote")
    return release


def rollback(session: Session, actor: User | None, reason: str = "") -> Release:
    """End the canary if there is one; otherwise go back to the previously active release."""
    canary = crud.canary_release(session)
    if canary is not None:
        canary.canary_share = 0.0
        _move(session, canary, ReleaseState.rolled_back, actor, "release.rollback", reason=reason)
        return canary
    active = crud.active_release(session)
    previous = session.exec(
        select(Release).where(Release.state == ReleaseState.retired).order_by(col(Release.updated_at).desc())
    ).first()
    if active is None or previous is None:
        raise ReleaseError("nothing to roll back to: no canary and no earlier active release")
    _move(session, active, ReleaseState.rolled_back, actor, "release.rollback", reason=reason)
    _move(session, previous, ReleaseState.active, actor, "release.restore", replaces=active.name)
    return previous


def _make_active(session: Session, release: Release, actor: User | None, action: str) -> None:
    current = crud.active_release(session)
    if current is not None and current.id != release.id:
        _move(session, current, ReleaseState.retired, actor, "release.retire", replaced_by=release.name)
    release.canary_share = 0.0
    _move(session, release, ReleaseState.active, actor, action)
