"""A person's rights over what they gave: withdraw a vote, or be forgotten altogether.

Withdrawing deletes one rating, A/B choice or correction of the caller's (and the stored
answer a retry of it would replay). Forgetting deletes everything a person said or did: their
conversations with every message and answer in them (and anyone's feedback on those answers),
the feedback they gave on other answers, their retry records and the Slack events that carried
their words; their user row stays, emptied (no name, no Slack id, no token), so the audit log
can still say that they were forgotten, by whom and how much went, never what was said.
Datasets are built from the store each night, so nothing forgotten is trained on again.
"""

from __future__ import annotations

import uuid
from typing import Literal

from sqlalchemy import delete, or_, update
from sqlmodel import Session, col, select

from store import audit
from store.errors import NotFound
from store.models import (
    AnswerFailure,
    Comparison,
    Conversation,
    Correction,
    IdempotencyRecord,
    Message,
    Rating,
    Response,
    Role,
    SlackDelivery,
    User,
)

Kind = Literal["ratings", "comparisons", "corrections"]
TABLES = {"ratings": Rating, "comparisons": Comparison, "corrections": Correction}


def withdraw(session: Session, user: User, kind: Kind, item_id: int) -> None:
    """Delete one of the caller's own votes or corrections; NotFound if nothing of that id is theirs."""
    model = TABLES[kind]
    item = session.get(model, item_id)
    if item is None or item.user_id != user.id:
        raise NotFound(f"No {kind[:-1]} {item_id} of yours")
    session.delete(item)
    # The answer a retry would replay names what was withdrawn: it goes too.
    records = session.exec(select(IdempotencyRecord).where(IdempotencyRecord.user_id == user.id)).all()
    for record in records:
        if record.body.get("id") == item_id and _kind_of(record.body) == kind:
            session.delete(record)
    audit.record(session, actor=user, action=f"{kind[:-1]}.withdraw", target=f"{kind[:-1]}:{item_id}")


def _kind_of(body: dict) -> str:
    """Which kind of answer a stored reply is, by the fields each kind's answer has."""
    return "comparisons" if "winner" in body else "ratings" if "thumb" in body else "corrections"


def forget(session: Session, user: User, actor: User | None) -> dict[str, int]:
    """Delete everything `user` said and gave; returns how many rows of each kind went."""
    conversations = list(session.exec(select(Conversation.id).where(Conversation.user_id == user.id)))
    responses = list(session.exec(select(Response.id).where(col(Response.conversation_id).in_(conversations))))
    counts = {
        "feedback on their answers": _delete_feedback_on(session, responses),
        "ratings": _count(session, delete(Rating).where(Rating.user_id == user.id)),
        "comparisons": _count(session, delete(Comparison).where(Comparison.user_id == user.id)),
        "corrections": _count(session, delete(Correction).where(Correction.user_id == user.id)),
        "retry records": _count(session, delete(IdempotencyRecord).where(IdempotencyRecord.user_id == user.id)),
    }
    # Messages and responses point at each other: unlink, then delete both, then the conversations.
    session.execute(update(Message).where(col(Message.conversation_id).in_(conversations)).values(response_id=None))
    counts["answers"] = _count(session, delete(Response).where(col(Response.id).in_(responses)))
    counts["messages"] = _count(session, delete(Message).where(col(Message.conversation_id).in_(conversations)))
    counts["failed answers"] = _count(session, delete(AnswerFailure).where(
        col(AnswerFailure.conversation_id).in_(conversations)))
    counts["conversations"] = _count(session, delete(Conversation).where(col(Conversation.id).in_(conversations)))
    counts["slack events"] = _forget_slack_events(session, user)
    user.external_id, user.name, user.token_hash, user.role = f"forgotten:{uuid.uuid4().hex}", "forgotten", None, Role.user
    session.add(user)
    audit.record(session, actor=actor, action="user.forget", target=f"user:{user.id}", details=counts)
    return counts


def _delete_feedback_on(session: Session, responses: list[uuid.UUID]) -> int:
    if not responses:
        return 0
    on_pair = or_(col(Comparison.response_a_id).in_(responses), col(Comparison.response_b_id).in_(responses))
    return (_count(session, delete(Rating).where(col(Rating.response_id).in_(responses)))
            + _count(session, delete(Comparison).where(on_pair))
            + _count(session, delete(Correction).where(col(Correction.response_id).in_(responses))))


def _forget_slack_events(session: Session, user: User) -> int:
    """Slack events kept in the inbox carry the sender's words: those of this person go."""
    slack_id = user.external_id.removeprefix("slack:") if user.external_id.startswith("slack:") else None
    if slack_id is None:
        return 0
    gone = 0
    for delivery in session.exec(select(SlackDelivery).where(col(SlackDelivery.body).is_not(None))):
        if (delivery.body.get("event") or {}).get("user") == slack_id:
            session.delete(delivery)
            gone += 1
    return gone


def _count(session: Session, statement) -> int:  # noqa: ANN001
    return session.execute(statement).rowcount or 0
