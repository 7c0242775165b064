"""Conversations, their messages, and the answers (responses) made in them."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import bindparam
from sqlmodel import Session, col, select

from store.errors import NotFound
from store.models import STAFF, Channel, Conversation, Message, MessageRole, Response, User


def create_conversation(
    session: Session, *, user: User, channel: Channel, external_ref: str | None = None
) -> Conversation:
    conversation = Conversation(user_id=user.id, channel=channel, external_ref=external_ref)
    session.add(conversation)
    session.flush()
    return conversation


def add_message(
    session: Session,
    *,
    conversation_id: uuid.UUID,
    role: MessageRole,
    content: str,
    response_id: uuid.UUID | None = None,
) -> Message:
    message = Message(conversation_id=conversation_id, role=role, content=content, response_id=response_id)
    session.add(message)
    session.flush()
    return message


def conversation_messages(session: Session, *, conversation_id: uuid.UUID) -> Sequence[Message]:
    query = select(Message).where(Message.conversation_id == conversation_id).order_by(col(Message.id))
    return session.exec(query).all()


def responses_for_prompts(session: Session, *, prompt_message_ids: Sequence[int]) -> Sequence[Response]:
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


def response_owners(session: Session, *, response_ids: set[uuid.UUID]) -> dict[uuid.UUID, int]:
    """Whose conversation each response belongs to, by response id (unknown ids left out)."""
    return dict(session.exec(_RESPONSE_OWNERS, params={"ids": list(response_ids)}).all())


def may_see(user: User, owner_id: int | None) -> bool:
    """Owner or staff may see a response: the person whose conversation it is in, or any reviewer
    or operator. Someone else's answer is as good as unknown to the caller (`owner_id` None: unknown)."""
    return owner_id is not None and (user.role in STAFF or owner_id == user.id)


def visible_response(session: Session, *, user: User, response_id: uuid.UUID) -> Response:
    """The response, if this user may see (and judge) it; NotFound otherwise."""
    query = select(Response, Conversation.user_id).join(Conversation, Conversation.id == Response.conversation_id)
    found = session.exec(query.where(Response.id == response_id)).first()
    if found is None or not may_see(user, found[1]):
        raise NotFound(f"No response with id {response_id}")
    return found[0]


def add_response(session: Session, *, response: Response) -> Response:
    session.add(response)
    session.flush()
    return response


def continue_with(session: Session, *, prompt_message_id: int, response: Response) -> Message:
    """Make `response` the assistant message that follows the prompt in its conversation."""
    query = select(Message).where(
        Message.conversation_id == response.conversation_id,
        Message.role == MessageRole.assistant,
        col(Message.id) > prompt_message_id,
    ).order_by(col(Message.id))
    message = session.exec(query).first()
    if message is None:
        return add_message(session, conversation_id=response.conversation_id, role=MessageRole.assistant,
                           content=response.text, response_id=response.id)
    message.content, message.response_id = response.text, response.id
    session.add(message)
    session.flush()
    return message
