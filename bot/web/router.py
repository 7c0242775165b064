"""The web widget's API: an anonymous session, conversations, and turns streamed over SSE."""

from __future__ import annotations

import json
import logging
import random
import secrets
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import StreamingResponse

from bot.web.protocol import ConversationOut, MessageIn, SessionOut, build_conversation
from feedback.deps import CurrentUser, SessionDep
from feedback.limits import limited
from feedback.protocol import error_responses
from serving.engine import SamplingParams
from serving.router import ChatDep
from serving.service import AnswerDelta, AnswerDone, ChatService, Turn
from store import conversations, users
from store.models import Channel, Conversation, User

router = APIRouter(prefix="/api", tags=["widget"])
log = logging.getLogger(__name__)


@router.post("/session", status_code=201, response_model=SessionOut, responses=error_responses(413, 429),
             dependencies=[Depends(limited("new sessions"))])
def start_session(session: SessionDep) -> SessionOut:
    """A new anonymous visitor; the widget keeps the token in localStorage."""
    visitor = secrets.token_hex(8)
    user = users.get_or_create_user(session, external_id=f"web:{visitor}", name=f"visitor {visitor[:6]}")
    token = users.issue_token(session, user=user)
    session.commit()
    return SessionOut(token=token, user_id=user.id)


@router.post("/conversations", status_code=201, response_model=ConversationOut,
             responses=error_responses(401, 413))
def create_conversation(session: SessionDep, user: CurrentUser) -> ConversationOut:
    conversation = conversations.create_conversation(session, user=user, channel=Channel.web)
    session.commit()
    return build_conversation(session, user, conversation)


@router.get("/conversations/{conversation_id}", response_model=ConversationOut,
            responses=error_responses(401, 404, 422))
def read_conversation(conversation_id: uuid.UUID, session: SessionDep, user: CurrentUser) -> ConversationOut:
    return build_conversation(session, user, owned_conversation(session, user, conversation_id))


@router.post("/conversations/{conversation_id}/messages", responses={
    200: {"content": {"text/event-stream": {}}, "description": "the turn streamed as server-sent events: `turn`, "
                                                               "`delta`s, `done`s (or `error`)"},
    **error_responses(401, 404, 413, 422, 429, 503)}, dependencies=[Depends(limited("chat turns"))])
async def send_message(
    conversation_id: uuid.UUID, body: MessageIn, request: Request, session: SessionDep, user: CurrentUser, chat: ChatDep
) -> StreamingResponse:
    """Answer a message, streamed as SSE: `turn` (ids and positions), `delta`s, `done`s."""
    owned_conversation(session, user, conversation_id)
    settings = request.app.state.settings
    turn = await chat.open_turn(conversation_id, body.content, ab=random.random() < settings.ab_share, channel="web")
    params = SamplingParams(temperature=settings.temperature, max_tokens=settings.max_tokens)
    return StreamingResponse(_events(chat, turn, params), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def owned_conversation(session: SessionDep, user: User, conversation_id: uuid.UUID) -> Conversation:
    conversation = session.get(Conversation, conversation_id)
    if conversation is None or conversation.user_id != user.id:
        raise HTTPException(404, f"No conversation with id {conversation_id}")
    return conversation


async def _events(chat: ChatService, turn: Turn, params: SamplingParams) -> AsyncIterator[str]:
    answers = [{"response_id": str(rid), "index": i, "position": turn.positions[i]}
               for i, rid in enumerate(turn.response_ids)]
    yield _event("turn", {"prompt_message_id": turn.prompt_message_id, "ab": len(answers) > 1,
                          "answers": answers})
    try:
        async for event in chat.stream(turn, params):
            rid = str(turn.response_ids[event.index])
            if isinstance(event, AnswerDelta):
                yield _event("delta", {"response_id": rid, "text": event.text})
            elif isinstance(event, AnswerDone):
                yield _event("done", {"response_id": rid, "text": event.response.text,
                                      "finish_reason": event.response.finish_reason,
                                      "release": turn.release_for(event.index).name})
    except Exception:  # the stream has begun: tell the widget in-band, keep details in the log
        log.exception("a widget turn failed in conversation %s", turn.conversation_id)
        yield _event("error", {"message": "The answer could not be generated; please try again."})


def _event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"
