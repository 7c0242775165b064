"""Which release answers a conversation. The database says which releases are live."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlmodel import Session

from feedback import crud
from feedback.models import Release


class NoActiveRelease(RuntimeError):
    """Serving found no active release in the database."""


@dataclass(frozen=True)
class ReleaseChoice:
    release_id: int
    name: str
    adapter: str | None  # the engine's adapter name; None serves the base model


def adapter_name(release: Release) -> str | None:
    # Each release gets its own versioned name, so old and new can be loaded side by side.
    return f"release-{release.id}" if release.adapter_path else None


def choose_release(session: Session, conversation_id: uuid.UUID) -> ReleaseChoice:
    """The active release answers; canary routing (sticky per conversation) slots in here."""
    release = crud.active_release(session)
    if release is None:
        raise NoActiveRelease("no active release: run `tuneloop db upgrade` and start the service once")
    return ReleaseChoice(release.id, release.name, adapter_name(release))
