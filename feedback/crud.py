"""Data access functions. Each takes the session explicitly; callers own the transaction."""

from __future__ import annotations

import functools
import hashlib
import secrets
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, case, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from store.db import DIALECT_INSERT, dialect_insert
from store.models import (
    AuditLog,
    Channel,
    Comparison,
    Conversation,
    Correction,
    IdempotencyRecord,
    Message,
    MessageRole,
    Rating,
    Release,
    ReleaseState,
    Response,
    Role,
    SlackDelivery,
    Thumb,
    User,
    Winner,
    utcnow,
)

# ---------------------------------------------------------------- users


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def get_or_create_user(session: Session, external_id: str, name: str, role: Role = Role.user) -> User:
    query = select(User).where(User.external_id == external_id)
    user = session.exec(query).first()
    if user is not None:
        return user
    try:
        with session.begin_nested():  # a concurrent first contact may create the same user
            user = User(external_id=external_id, name=name, role=role)
            session.add(user)
    except IntegrityError:
        user = session.exec(query).one()
    return user


TOKEN_PREFIX = "tl-"  # how a tuneloop token is told from another system's key (a client's placeholder)


def is_tuneloop_token(token: str) -> bool:
    return token.startswith(TOKEN_PREFIX)


def issue_token(session: Session, user: User) -> str:
    """Give the user a new bearer token (the old one stops working); only its hash is kept."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    user.token_hash = hash_token(token)
    session.add(user)
    session.flush()
    return token


def user_by_token(session: Session, token: str) -> User | None:
    return session.exec(select(User).where(User.token_hash == hash_token(token))).first()


# The batch lookups below are built once: building a statement costs more Python time
# than running it, and the feedback writer runs them for every batch.
_USERS_BY_TOKEN_HASH = select(User).where(col(User.token_hash).in_(bindparam("hashes", expanding=True)))


def users_by_token_hash(session: Session, token_hashes: set[str]) -> dict[str, User]:
    users = session.exec(_USERS_BY_TOKEN_HASH, params={"hashes": list(token_hashes)}).all()
    return {user.token_hash: user for user in users}


# ---------------------------------------------------------------- conversations


def create_conversation(
    session: Session, user: User, channel: Channel, external_ref: str | None = None
) -> Conversation:
    conversation = Conversation(user_id=user.id, channel=channel, external_ref=external_ref)
    session.add(conversation)
    session.flush()
    return conversation


def add_message(
    session: Session,
    conversation_id: uuid.UUID,
    role: MessageRole,
    content: str,
    response_id: uuid.UUID | None = None,
) -> Message:
    message = Message(conversation_id=conversation_id, role=role, content=content, response_id=response_id)
    session.add(message)
    session.flush()
    return message


def conversation_messages(session: Session, conversation_id: uuid.UUID) -> Sequence[Message]:
    query = select(Message).where(Message.conversation_id == conversation_id).order_by(col(Message.id))
    return session.exec(query).all()


def responses_for_prompts(session: Session, prompt_message_ids: Sequence[int]) -> Sequence[Response]:
    if not prompt_message_ids:
        return []
    query = (
        select(Response)
        .where(col(Response.prompt_message_id).in_(prompt_message_ids))
        .order_by(col(Response.created_at), col(Response.id))
    )
    return session.exec(query).all()


_RESPONSE_OWNERS = (
    select(Response.id, Conversation.user_id)
    .join(Conversation, Conversation.id == Response.conversation_id)
    .where(col(Response.id).in_(bindparam("ids", expanding=True)))
)


def response_owners(session: Session, response_ids: set[uuid.UUID]) -> dict[uuid.UUID, int]:
    """Whose conversation each response belongs to, by response id (unknown ids left out)."""
    return dict(session.exec(_RESPONSE_OWNERS, params={"ids": list(response_ids)}).all())


def add_response(session: Session, response: Response) -> Response:
    session.add(response)
    session.flush()
    return response


def continue_with(session: Session, prompt_message_id: int, response: Response) -> Message:
    """Make `response` the assistant message that follows the prompt in its conversation."""
    query = select(Message).where(
        Message.conversation_id == response.conversation_id,
        Message.role == MessageRole.assistant,
        col(Message.id) > prompt_message_id,
    ).order_by(col(Message.id))
    message = session.exec(query).first()
    if message is None:
        return add_message(session, response.conversation_id, MessageRole.assistant, response.text, response.id)
    message.content, message.response_id = response.text, response.id
    session.add(message)
    session.flush()
    return message


# ---------------------------------------------------------------- feedback


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


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


def save_ratings(session: Session, ratings: Sequence[dict[str, Any]]) -> dict[tuple[uuid.UUID, int], Any]:
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
    rows = session.execute(_rating_upsert(_dialect(session)), params).all()
    return {(row.response_id, row.user_id): row for row in rows}


def save_rating(
    session: Session,
    user: User,
    response: Response,
    *,
    thumb: Thumb | None = None,
    reason: str | None = None,
    comment: str | None = None,
    stars: int | None = None,
) -> Rating:
    """One rating per user and response, last write wins (see `_rating_upsert`)."""
    values = {"response_id": response.id, "user_id": user.id, "thumb": thumb, "reason": reason,
              "comment": comment, "stars": stars}
    row = save_ratings(session, [values])[(response.id, user.id)]
    return session.get(Rating, row.id, populate_existing=True)


def save_comparison(
    session: Session,
    user: User,
    response_a: Response,
    response_b: Response,
    *,
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
    continue_with(session, response_a.prompt_message_id, chosen)
    return comparison


def add_correction(session: Session, user: User, response: Response, text: str, comment: str | None) -> Correction:
    correction = Correction(response_id=response.id, user_id=user.id, text=text, comment=comment)
    session.add(correction)
    session.flush()
    return correction


def ratings_by_user(session: Session, user: User, response_ids: Sequence[uuid.UUID]) -> Sequence[Rating]:
    if not response_ids:
        return []
    query = select(Rating).where(Rating.user_id == user.id, col(Rating.response_id).in_(response_ids))
    return session.exec(query).all()


def comparisons_by_user(session: Session, user: User, response_ids: Sequence[uuid.UUID]) -> Sequence[Comparison]:
    if not response_ids:
        return []
    query = select(Comparison).where(Comparison.user_id == user.id, col(Comparison.response_a_id).in_(response_ids))
    return session.exec(query).all()


# ---------------------------------------------------------------- idempotency


def find_idempotent(session: Session, user: User, key: str) -> IdempotencyRecord | None:
    query = select(IdempotencyRecord).where(IdempotencyRecord.user_id == user.id, IdempotencyRecord.key == key)
    return session.exec(query).first()


_IDEMPOTENCY_RECORDS = select(IdempotencyRecord).where(
    col(IdempotencyRecord.key).in_(bindparam("keys", expanding=True)),
    col(IdempotencyRecord.user_id).in_(bindparam("users", expanding=True)),
)


def idempotency_records(session: Session, keys: set[tuple[int, str]]) -> dict[tuple[int, str], IdempotencyRecord]:
    """Stored answers by (user id, key)."""
    if not keys:
        return {}
    params = {"keys": list({key for _, key in keys}), "users": list({user for user, _ in keys})}
    records = session.exec(_IDEMPOTENCY_RECORDS, params=params).all()
    return {(r.user_id, r.key): r for r in records if (r.user_id, r.key) in keys}  # the query over-fetches


def remember_idempotent_many(session: Session, records: Sequence[dict[str, Any]]) -> set[tuple[int, str]]:
    """Store answers (dicts of user_id, key, request_hash, status_code, body) under their
    keys; returns the (user id, key) pairs stored, leaving out keys already taken."""
    if not records:
        return set()
    now = utcnow()
    params = sorted((record | {"created_at": now} for record in records), key=lambda r: (r["user_id"], r["key"]))
    rows = session.execute(_claim_keys(_dialect(session)), params).all()
    return {(row.user_id, row.key) for row in rows}


@functools.cache
def _claim_keys(dialect: str):
    table = IdempotencyRecord.__table__
    statement = DIALECT_INSERT[dialect](table).on_conflict_do_nothing(index_elements=["user_id", "key"])
    return statement.returning(table.c.user_id, table.c.key)


def remember_idempotent(
    session: Session, user: User, key: str, request_hash: str, status_code: int, body: dict
) -> bool:
    """Store the answer under its key; False if the key was taken (by a retry that won a race)."""
    record = {"user_id": user.id, "key": key, "request_hash": request_hash, "status_code": status_code, "body": body}
    return (user.id, key) in remember_idempotent_many(session, [record])


def ratings_for_response(session: Session, response_id: uuid.UUID) -> list[tuple[str, Rating]]:
    """Every rating of one answer, with the rater's external id (such as 'slack:U123')."""
    query = select(User.external_id, Rating).join(User, User.id == Rating.user_id).where(Rating.response_id == response_id)
    return list(session.exec(query).all())


def comparisons_for_pair(session: Session, response_a_id: uuid.UUID, response_b_id: uuid.UUID) -> list[tuple[str, Comparison]]:
    query = select(User.external_id, Comparison).join(User, User.id == Comparison.user_id).where(
        Comparison.response_a_id == response_a_id, Comparison.response_b_id == response_b_id
    )
    return list(session.exec(query).all())


def check_outcomes(session: Session, release_id: int) -> dict[str, Any]:
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


# ---------------------------------------------------------------- slack deliveries


def claim_slack_delivery(session: Session, key: str) -> bool:
    """Mark an event or post as handled; False when someone (a retry, a replica) was first."""
    statement = dialect_insert(session, SlackDelivery).values(key=key, created_at=utcnow())
    statement = statement.on_conflict_do_nothing(index_elements=["key"]).returning(SlackDelivery.key)
    return session.execute(statement).first() is not None


def take_slack_event(session: Session, key: str, body: dict, lease_s: float) -> bool:
    """Keep an event and lease it to the caller; False when it is done or another holder's lease
    still runs (a retry while the first attempt works, or a second replica)."""
    now = utcnow()
    statement = dialect_insert(session, SlackDelivery).values(key=key, created_at=now, body=body,
                                                              lease_until=now + timedelta(seconds=lease_s))
    table = SlackDelivery.__table__.c
    statement = statement.on_conflict_do_update(
        index_elements=["key"], set_={"lease_until": now + timedelta(seconds=lease_s)},
        where=table.done_at.is_(None) & table.lease_until.is_not(None) & (table.lease_until < now),
    ).returning(SlackDelivery.key)
    return session.execute(statement).first() is not None


def renew_slack_event(session: Session, key: str, lease_s: float) -> None:
    delivery = session.get(SlackDelivery, key)
    if delivery is not None and delivery.done_at is None:
        delivery.lease_until = utcnow() + timedelta(seconds=lease_s)
        session.add(delivery)


def finish_slack_event(session: Session, key: str) -> None:
    """Handled, for better or worse (a failed answer has told its user so): never handled again."""
    delivery = session.get(SlackDelivery, key)
    if delivery is not None:
        delivery.done_at = delivery.lease_until = utcnow()
        session.add(delivery)


def stranded_slack_events(session: Session) -> list[SlackDelivery]:
    """Events whose holder died mid-work: not done, lease run out."""
    query = select(SlackDelivery).where(col(SlackDelivery.done_at).is_(None), col(SlackDelivery.body).is_not(None),
                                        col(SlackDelivery.lease_until) < utcnow())
    return list(session.exec(query.order_by(col(SlackDelivery.created_at))))


def remember_slack_post(session: Session, key: str, ts: str) -> None:
    """The message an event's answer went into, so handling it again edits that one."""
    delivery = session.get(SlackDelivery, key)
    if delivery is not None:
        delivery.posted_ts = ts
        session.add(delivery)


def slack_post_of(session: Session, key: str) -> str | None:
    delivery = session.get(SlackDelivery, key)
    return delivery.posted_ts if delivery else None


def forget_slack_delivery(session: Session, key: str) -> None:
    """Undo a claim whose work failed, so the next attempt tries again."""
    delivery = session.get(SlackDelivery, key)
    if delivery is not None:
        session.delete(delivery)


# ---------------------------------------------------------------- releases and audit

REPORT_KEY = "share_key"


def share_report(session: Session, release: Release) -> str:
    """A key that opens the release's report page without a token, for a link posted where
    only operators read (the Slack operators' channel). Made once, kept in the report."""
    if not release.report.get(REPORT_KEY):
        release.report = {**release.report, REPORT_KEY: secrets.token_urlsafe(24)}
        session.add(release)
        session.flush()
    return release.report[REPORT_KEY]



def active_release(session: Session) -> Release | None:
    return session.exec(select(Release).where(Release.state == ReleaseState.active)).first()


def canary_release(session: Session) -> Release | None:
    return session.exec(select(Release).where(Release.state == ReleaseState.canary)).first()


def ensure_base_release(session: Session, base_model: str) -> Release:
    """With no active release yet, the base model itself is release `base`."""
    release = active_release(session)
    if release is None:
        release = session.exec(select(Release).where(Release.name == "base")).first()
    if release is None:
        release = Release(name="base", base_model=base_model, state=ReleaseState.active)
        session.add(release)
        session.flush()
        audit(session, None, "release.create", f"release:{release.name}", {"base_model": base_model})
    return release


def audit(session: Session, actor: User | None, action: str, target: str, details: dict | None = None) -> AuditLog:
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
