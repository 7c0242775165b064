"""Idempotency-Key handling: a retried request replays the stored answer, never stores twice.

Stripe's scheme: the key is scoped to the caller; the first answer is stored in the
same transaction as the data it describes; a reuse with a different body is refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from store import idempotency
from store.errors import Conflict, Invalid
from store.models import IdempotencyRecord, User

MAX_KEY_LENGTH = 200
REPLAYED_HEADER = "Idempotent-Replayed"


@dataclass(frozen=True)
class Reply:
    """A write's answer, as stored under its key: status, JSON body, and whether this is a replay."""

    status_code: int
    body: dict
    replayed: bool = False

    @property
    def headers(self) -> dict[str, str]:
        return {REPLAYED_HEADER: "true"} if self.replayed else {}


def request_hash(route: str, payload: BaseModel) -> str:
    canonical = json.dumps({"route": route, "body": payload.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def run_once(
    session: Session,
    user: User,
    key: str | None,
    route: str,
    payload: BaseModel,
    store: Callable[[], tuple[int, dict]],
) -> Reply:
    """Run `store` (which writes and returns status and body) at most once per key."""
    if key is None:
        status, body = store()
        session.commit()
        return Reply(status, body)
    check_key(key)
    digest = request_hash(route, payload)
    # Do the work first, then claim the key: a fresh key (the common case) costs one insert.
    # A key that is already taken rolls the work back and answers as the first request did.
    status, body = store()
    try:
        claimed = idempotency.remember_idempotent(session, user=user, key=key, request_hash=digest,
                                                  status_code=status, body=body)
    except IntegrityError:  # SQLite may report a concurrent claim as a conflict error
        claimed = False
    if not claimed:
        session.rollback()
        replayed = _replay(session, user, key, digest)
        if replayed is None:
            raise key_in_use(key)
        return replayed
    session.commit()
    return Reply(status, body)


def key_in_use(key: str) -> Conflict:
    return Conflict(f"Idempotency-Key '{key}' is in use by a request still running; retry shortly")


def _replay(session: Session, user: User, key: str, digest: str) -> Reply | None:
    record = idempotency.find_idempotent(session, user=user, key=key)
    return None if record is None else replay(record, digest)


def replay(record: IdempotencyRecord, digest: str) -> Reply:
    """The stored answer again, if the retry asks the same thing."""
    if record.request_hash != digest:
        raise Invalid(f"Idempotency-Key '{record.key}' was already used with a different request; use a new key")
    return Reply(record.status_code, record.body, replayed=True)


def check_key(key: str | None) -> None:
    if key is not None and (not key or len(key) > MAX_KEY_LENGTH):
        raise Invalid(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters")
