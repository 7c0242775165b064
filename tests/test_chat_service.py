"""The chat turn as every channel uses it."""

from __future__ import annotations

import uuid

from feedback.models import Message, MessageRole
from serving.service import _answered_history


def test_a_prompt_that_was_never_answered_is_not_sent_again():
    conversation = uuid.uuid4()

    def message(role: MessageRole, content: str) -> Message:
        return Message(conversation_id=conversation, role=role, content=content)

    history = _answered_history([
        message(MessageRole.user, "first"),
        message(MessageRole.assistant, "answer"),
        message(MessageRole.user, "lost: the client left"),
        message(MessageRole.user, "now"),
    ])
    assert [m["content"] for m in history] == ["first", "answer", "now"]
