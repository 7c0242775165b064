"""What people judge of answers: ratings (thumbs, stars, comments), A/B comparisons, corrections.

One rating per user and answer and one comparison per user and pair, last write wins even
under races (INSERT ... ON CONFLICT DO UPDATE on both databases).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import case, func
from sqlmodel import Session, col, select

from store.conversations import continue_with
from store.db import DIALECT_INSERT, dialect_insert, dialect_of
from store.models import Comparison, Correction, Rating, Response, Thumb, User, Winner, utcnow


def _upsert(session: Session, model: type, values: dict[str, Any], keys: list[str], update: dict[str, Any]):
    """INSERT ... ON CONFLICT DO UPDATE on both dialects: last write wins even under races."""
    statement = dialect_insert(session, model).values(**values).on_conflict_do_update(index_elements=keys, set_=update)
    # RETURNING the entity hands back the stored row, whichever write won.
    statement = statement.returning(model).execution_options(populate_existing=True)
    return session.execute(statement).scalar_one()


@functools.cache
def _rating_upsert(dialect: str):
    """INSERT ... ON CONFLICT that applies a rating's fields to the stored one.

    Each write sets the fields it names (None means "not named"): a thumb vote always
    sets its reason too (cleared when none is given), so changing a thumbs-down to a
    thumbs-up does not keep the old reason; stars and a comment stay until a later write
    brings others. Written per row in SQL, so one statement serves a whole batch.
    """
    table = Rating.__table__
    statement = DIALECT_INSERT[dialect](table)
    new = statement.excluded
    voted = new.thumb.is_not(None)
    update = {
        "thumb": case((voted, new.thumb), else_=table.c.thumb),
        "reason": case((voted, new.reason), else_=table.c.reason),
        "stars": func.coalesce(new.stars, table.c.stars),
        "comment": func.coalesce(new.comment, table.c.comment),
        "updated_at": new.updated_at,
    }
    return statement.on_conflict_do_update(index_elements=["response_id", "user_id"], set_=update).returning(table)


def save_ratings(session: Session, *, ratings: Sequence[dict[str, Any]]) -> dict[tuple[uuid.UUID, int], Any]:
    """Store ratings (dicts of response_id, user_id, thumb, reason, comment, stars) in one
    statement, last write wins per user and response. Returns the stored rows by
    (response_id, user_id). A batch must not name one user and response twice."""
    now = utcnow()
    fields = ("thumb", "reason", "comment", "stars")
    params = [
        {"response_id": r["response_id"], "user_id": r["user_id"], "created_at": now, "updated_at": now}
        | {name: r.get(name) for name in fields}
        for r in ratings
    ]
    # In one order, so concurrent batches lock rows alike and never deadlock each other.
    params.sort(key=lambda row: (str(row["response_id"]), row["user_id"]))
    rows = session.execute(_rating_upsert(dialect_of(session)), params).all()
    return {(row.response_id, row.user_id): row for row in rows}


def save_rating(
    session: Session,
    *,
    user: User,
    response: Response,
    thumb: Thumb | None = None,
    reason: str | None = None,
    comment: str | None = None,
    stars: int | None = None,
) -> Rating:
    """One rating per user and response, last write wins (see `_rating_upsert`)."""
    values = {"response_id": response.id, "user_id": user.id, "thumb": thumb, "reason": reason,
              "comment": comment, "stars": stars}
    row = save_ratings(session, ratings=[values])[(response.id, user.id)]
    return session.get(Rating, row.id, populate_existing=True)


def save_comparison(
    session: Session,
    *,
    user: User,
    response_a: Response,
    response_b: Response,
    winner: Winner,
    a_position: int,
    kind: str | None = None,
) -> Comparison:
    """Store the choice (last write wins) and let the conversation go on with the winner.

    The pair's kind is what the chat made it ("sample", or a plugin's such as "rag"),
    as its answers' traces say, unless given."""
    kind = kind or response_a.trace.get("pair_kind") or "sample"
    now = utcnow()
    update = {"winner": winner.value, "a_position": a_position, "b_position": 1 - a_position, "updated_at": now}
    values = {
        "user_id": user.id,
        "response_a_id": response_a.id,
        "response_b_id": response_b.id,
        "kind": kind,
        "created_at": now,
        **update,
    }
    comparison = _upsert(session, Comparison, values, ["user_id", "response_a_id", "response_b_id"], update)
    # Tie or both bad: the conversation goes on with the answer shown first.
    shown_first = response_a if a_position == 0 else response_b
    chosen = {Winner.a: response_a, Winner.b: response_b}.get(winner, shown_first)
    continue_with(session, prompt_message_id=response_a.prompt_message_id, response=chosen)
    return comparison


def add_correction(session: Session, *, user: User, response: Response, text: str, comment: str | None) -> Correction:
    correction = Correction(response_id=response.id, user_id=user.id, text=text, comment=comment)
    session.add(correction)
    session.flush()
    return correction


def ratings_by_user(session: Session, *, user: User, response_ids: Sequence[uuid.UUID]) -> Sequence[Rating]:
    if not response_ids:
        return []
    query = select(Rating).where(Rating.user_id == user.id, col(Rating.response_id).in_(response_ids))
    return session.exec(query).all()


def comparisons_by_user(session: Session, *, user: User, response_ids: Sequence[uuid.UUID]) -> Sequence[Comparison]:
    if not response_ids:
        return []
    query = select(Comparison).where(Comparison.user_id == user.id, col(Comparison.response_a_id).in_(response_ids))
    return session.exec(query).all()


def ratings_for_response(session: Session, *, response_id: uuid.UUID) -> list[tuple[str, Rating]]:
    """Every rating of one answer, with the rater's external id (such as 'slack:U123')."""
    query = select(User.external_id, Rating).join(User, User.id == Rating.user_id).where(Rating.response_id == response_id)
    return list(session.exec(query).all())


def comparisons_for_pair(
    session: Session, *, response_a_id: uuid.UUID, response_b_id: uuid.UUID
) -> list[tuple[str, Comparison]]:
    query = select(User.external_id, Comparison).join(User, User.id == Comparison.user_id).where(
        Comparison.response_a_id == response_a_id, Comparison.response_b_id == response_b_id
    )
    return list(session.exec(query).all())
