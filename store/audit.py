"""The audit log: who did what to which release, user or item, and when."""

from __future__ import annotations

from sqlmodel import Session

from store.models import AuditLog, User


def record(session: Session, *, actor: User | None, action: str, target: str, details: dict | None = None) -> AuditLog:
    """Write one entry; `actor` None is the system (a job, not a person)."""
    entry = AuditLog(
        actor_id=actor.id if actor else None,
        actor=actor.name if actor else "system",
        action=action,
        target=target,
        details=details or {},
    )
    session.add(entry)
    session.flush()
    return entry
