"""Slack users and threads as tuneloop users and conversations."""

from __future__ import annotations

import uuid

from sqlmodel import Session, select

from bot.slack.config import SlackConfig
from store import conversations, users
from store.models import Channel, Conversation, Role, User


def external_id(slack_user_id: str) -> str:
    return f"slack:{slack_user_id}"


def slack_user(session: Session, config: SlackConfig, slack_user_id: str) -> User:
    """The tuneloop user for a Slack id, created on first contact.

    A Slack id listed in the config (TUNELOOP_SLACK_OPERATORS, _REVIEWERS) gets that role (and keeps it while listed); anyone
    else keeps the role `tuneloop users` gave them, `user` by default.
    """
    granted = (Role.operator if slack_user_id in config.operators
               else Role.reviewer if slack_user_id in config.reviewers else None)
    user = users.get_or_create_user(session, external_id=external_id(slack_user_id), name=slack_user_id,
                                    role=granted or Role.user)
    if granted is not None and user.role != granted:
        user.role = granted
        session.add(user)
        session.flush()
    return user


def thread_conversation(session: Session, user: User, team: str, channel: str, thread_ts: str) -> uuid.UUID:
    """The conversation a Slack thread is, started by `user` on its first message."""
    ref = f"{team}:{channel}:{thread_ts}"
    query = select(Conversation.id).where(Conversation.channel == Channel.slack, Conversation.external_ref == ref)
    found = session.exec(query).first()
    return found or conversations.create_conversation(session, user=user, channel=Channel.slack, external_ref=ref).id


def slack_id_of(user_external_id: str) -> str | None:
    return user_external_id.removeprefix("slack:") if user_external_id.startswith("slack:") else None
