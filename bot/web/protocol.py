"""Bodies of the widget API, and the conversation as the widget redraws it after a reload."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session

from store import conversations, judgments
from store.models import Conversation, MessageRole, User


class SessionOut(BaseModel):
    token: str
    user_id: int


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    content: str = Field(min_length=1, max_length=8000)


class RatingView(BaseModel):
    thumb: str | None = None
    reason: str | None = None
    comment: str | None = None
    stars: int | None = None


class AnswerView(BaseModel):
    response_id: uuid.UUID
    text: str
    finish_reason: str
    index: int
    position: int
    rating: RatingView | None = None


class TurnView(BaseModel):
    prompt_message_id: int
    prompt: str
    answers: list[AnswerView]  # in the order shown
    chosen_response_id: uuid.UUID | None = None
    winner: str | None = None  # the user's A/B choice, if any, as "a"/"b"/"tie"/"both_bad"


class ConversationOut(BaseModel):
    id: uuid.UUID
    turns: list[TurnView]


def build_conversation(session: Session, user: User, conversation: Conversation) -> ConversationOut:
    messages = conversations.conversation_messages(session, conversation_id=conversation.id)
    prompts = [m for m in messages if m.role == MessageRole.user]
    chosen = {m.response_id for m in messages if m.role == MessageRole.assistant and m.response_id}
    responses = conversations.responses_for_prompts(session, prompt_message_ids=[p.id for p in prompts])
    ids = [r.id for r in responses]
    ratings = {r.response_id: r for r in judgments.ratings_by_user(session, user=user, response_ids=ids)}
    comparisons = {c.response_a_id: c for c in judgments.comparisons_by_user(session, user=user, response_ids=ids)}
    turns = []
    for prompt in prompts:
        answers = sorted(
            (AnswerView(response_id=r.id, text=r.text, finish_reason=r.finish_reason, index=r.trace.get("index", 0),
                        position=r.trace.get("shown_at", 0),
                        rating=RatingView.model_validate(ratings[r.id], from_attributes=True) if r.id in ratings else None)
             for r in responses if r.prompt_message_id == prompt.id),
            key=lambda answer: answer.position,
        )
        picked = next((a.response_id for a in answers if a.response_id in chosen), None)
        comparison = next((comparisons[a.response_id] for a in answers if a.response_id in comparisons), None)
        turns.append(TurnView(prompt_message_id=prompt.id, prompt=prompt.content, answers=answers,
                              chosen_response_id=picked, winner=comparison.winner.value if comparison else None))
    return ConversationOut(id=conversation.id, turns=turns)
