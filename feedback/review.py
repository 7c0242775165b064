"""The reviewers' queue: what a reviewer should judge next.

A/B pairs come first (a comparison says more than a thumb), then single answers; within
each, newest first. A reviewer never gets an item they have already judged.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

from sqlmodel import Session, col, select

from feedback import crud
from feedback.models import Comparison, Correction, Message, MessageRole, Rating, Response, User

LOOK_BACK = 500  # answers considered per call; older ones wait for a quieter queue


@dataclass
class ReviewTask:
    kind: Literal["compare", "rate"]
    prompt: Message
    history: list[tuple[str, str]]  # (role, text) before the prompt
    responses: list[Response]  # one to rate, or the pair to compare


def next_task(session: Session, reviewer: User) -> ReviewTask | None:
    recent = session.exec(select(Response).order_by(col(Response.created_at).desc()).limit(LOOK_BACK)).all()
    by_prompt: dict[int, list[Response]] = {}
    for response in recent:
        by_prompt.setdefault(response.prompt_message_id, []).append(response)
    judged = _judged_by(session, reviewer, [r.id for r in recent])
    for responses in by_prompt.values():
        if len(responses) == 2 and not {r.id for r in responses} & judged:
            return _task(session, "compare", sorted(responses, key=lambda r: r.trace.get("index", 0)))
    for response in recent:
        if len(by_prompt[response.prompt_message_id]) == 1 and response.id not in judged:
            return _task(session, "rate", [response])
    return None


def _judged_by(session: Session, reviewer: User, ids: list[uuid.UUID]) -> set[uuid.UUID]:
    rated = session.exec(select(Rating.response_id).where(Rating.user_id == reviewer.id, col(Rating.response_id).in_(ids)))
    corrected = session.exec(select(Correction.response_id).where(Correction.user_id == reviewer.id,
                                                                  col(Correction.response_id).in_(ids)))
    compared = session.exec(select(Comparison.response_a_id, Comparison.response_b_id).where(
        Comparison.user_id == reviewer.id, col(Comparison.response_a_id).in_(ids)))
    return set(rated) | set(corrected) | {i for pair in compared for i in pair}


def _task(session: Session, kind: Literal["compare", "rate"], responses: list[Response]) -> ReviewTask:
    messages = crud.conversation_messages(session, responses[0].conversation_id)
    prompt = next(m for m in messages if m.id == responses[0].prompt_message_id)
    history = [(m.role.value, m.content) for m in messages
               if m.id < prompt.id and m.role in (MessageRole.user, MessageRole.assistant)]
    return ReviewTask(kind, prompt, history, responses)
