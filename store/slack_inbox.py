"""Slack's deliveries: events kept and leased until handled (the inbox), and posts made once.

A row per event or post key; see bot/slack/inbox.py for how the app uses them.
"""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import Session, col, select

from store.db import dialect_insert
from store.models import SlackDelivery, utcnow


def claim_slack_delivery(session: Session, *, key: str) -> bool:
    """Mark an event or post as handled; False when someone (a retry, a replica) was first."""
    statement = dialect_insert(session, SlackDelivery).values(key=key, created_at=utcnow())
    statement = statement.on_conflict_do_nothing(index_elements=["key"]).returning(SlackDelivery.key)
    return session.execute(statement).first() is not None


def take_slack_event(session: Session, *, key: str, body: dict, lease_s: float) -> bool:
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


def renew_slack_event(session: Session, *, key: str, lease_s: float) -> None:
    delivery = session.get(SlackDelivery, key)
    if delivery is not None and delivery.done_at is None:
        delivery.lease_until = utcnow() + timedelta(seconds=lease_s)
        session.add(delivery)


def finish_slack_event(session: Session, *, key: str) -> None:
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


def remember_slack_post(session: Session, *, key: str, ts: str) -> None:
    """The message an event's answer went into, so handling it again edits that one."""
    delivery = session.get(SlackDelivery, key)
    if delivery is not None:
        delivery.posted_ts = ts
        session.add(delivery)


def slack_post_of(session: Session, *, key: str) -> str | None:
    delivery = session.get(SlackDelivery, key)
    return delivery.posted_ts if delivery else None


def forget_slack_delivery(session: Session, *, key: str) -> None:
    """Undo a claim whose work failed, so the next attempt tries again."""
    delivery = session.get(SlackDelivery, key)
    if delivery is not None:
        session.delete(delivery)
