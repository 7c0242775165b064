"""Stored answers by Idempotency-Key, per caller: what a retry of a write gets back."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam
from sqlmodel import Session, col, select

from store.db import DIALECT_INSERT, dialect_of
from store.models import IdempotencyRecord, User, utcnow


def find_idempotent(session: Session, *, user: User, key: str) -> IdempotencyRecord | None:
    query = select(IdempotencyRecord).where(IdempotencyRecord.user_id == user.id, IdempotencyRecord.key == key)
    return session.exec(query).first()


_IDEMPOTENCY_RECORDS = select(IdempotencyRecord).where(
    col(IdempotencyRecord.key).in_(bindparam("keys", expanding=True)),
    col(IdempotencyRecord.user_id).in_(bindparam("users", expanding=True)),
)


def idempotency_records(session: Session, *, keys: set[tuple[int, str]]) -> dict[tuple[int, str], IdempotencyRecord]:
    """Stored answers by (user id, key)."""
    if not keys:
        return {}
    params = {"keys": list({key for _, key in keys}), "users": list({user for user, _ in keys})}
    records = session.exec(_IDEMPOTENCY_RECORDS, params=params).all()
    return {(r.user_id, r.key): r for r in records if (r.user_id, r.key) in keys}  # the query over-fetches


def remember_idempotent_many(session: Session, *, records: Sequence[dict[str, Any]]) -> set[tuple[int, str]]:
    """Store answers (dicts of user_id, key, request_hash, status_code, body) under their
    keys; returns the (user id, key) pairs stored, leaving out keys already taken."""
    if not records:
        return set()
    now = utcnow()
    params = sorted((record | {"created_at": now} for record in records), key=lambda r: (r["user_id"], r["key"]))
    rows = session.execute(_claim_keys(dialect_of(session)), params).all()
    return {(row.user_id, row.key) for row in rows}


@functools.cache
def _claim_keys(dialect: str):
    table = IdempotencyRecord.__table__
    statement = DIALECT_INSERT[dialect](table).on_conflict_do_nothing(index_elements=["user_id", "key"])
    return statement.returning(table.c.user_id, table.c.key)


def remember_idempotent(
    session: Session, *, user: User, key: str, request_hash: str, status_code: int, body: dict
) -> bool:
    """Store the answer under its key; False if the key was taken (by a retry that won a race)."""
    record = {"user_id": user.id, "key": key, "request_hash": request_hash, "status_code": status_code, "body": body}
    return (user.id, key) in remember_idempotent_many(session, records=[record])
