"""The reviewers' queue: what a reviewer should judge next.

A/B pairs come first (a comparison says more than a thumb), newest first. Then single
answers, the ones the active release's reward model is least sure about first
(`Response.review_uncertainty`, written by serving's review scorer), answers it has not
scored last, newest first among equals. A reviewer never gets an item they have already
judged. `queue` is the order; `next_task` is its head, what Slack and the API hand out.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import and_, exists, or_
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from store import conversations
from store.models import (
    STAFF,
    Comparison,
    Correction,
    Message,
    MessageRole,
    Rating,
    Response,
    User,
    Winner,
)

LOOK_BACK = 500  # answers searched for pairs per call; older pairs wait for a quieter queue


@dataclass
class ReviewTask:
    kind: Literal["compare", "rate"]
    prompt: Message
    history: list[tuple[str, str]]  # (role, text) before the prompt
    responses: list[Response]  # one to rate, or the pair to compare

    @property
    def uncertainty(self) -> float | None:
        """The reward model's doubt about the task: of a pair, its less certain answer."""
        scored = [r.review_uncertainty for r in self.responses if r.review_uncertainty is not None]
        return max(scored) if scored else None

    @property
    def created_at(self) -> datetime:
        return max(r.created_at for r in self.responses)


def next_task(session: Session, reviewer: User) -> ReviewTask | None:
    tasks = queue(session, reviewer, 1)
    return tasks[0] if tasks else None


def queue(session: Session, reviewer: User, limit: int) -> list[ReviewTask]:
    """The reviewer's next `limit` tasks, in the order they are handed out."""
    pairs = _pairs(session, reviewer)[:limit]
    singles = _singles(session, reviewer, limit - len(pairs)) if len(pairs) < limit else []
    return [_task(session, "compare", pair) for pair in pairs] + [_task(session, "rate", [r]) for r in singles]


def _pairs(session: Session, reviewer: User) -> list[list[Response]]:
    recent = session.exec(select(Response).order_by(col(Response.created_at).desc()).limit(LOOK_BACK)).all()
    by_prompt: dict[int, list[Response]] = {}
    for response in recent:
        by_prompt.setdefault(response.prompt_message_id, []).append(response)
    judged = _judged_by(session, reviewer, [r.id for r in recent])
    return [sorted(responses, key=lambda r: r.trace.get("index", 0)) for responses in by_prompt.values()
            if len(responses) == 2 and not {r.id for r in responses} & judged]


def _singles(session: Session, reviewer: User, limit: int) -> list[Response]:
    """Sole answers to their prompt that the reviewer has not judged, in review
    order; the ORDER BY is the index `ix_responses_review_order` key for key."""
    other = aliased(Response)
    query = (
        select(Response)
        .where(~exists().where(other.prompt_message_id == Response.prompt_message_id, other.id != Response.id))
        .where(~exists().where(Rating.response_id == Response.id, Rating.user_id == reviewer.id))
        .where(~exists().where(Correction.response_id == Response.id, Correction.user_id == reviewer.id))
        .where(~exists().where(Comparison.user_id == reviewer.id, or_(Comparison.response_a_id == Response.id,
                                                                      Comparison.response_b_id == Response.id)))
        .order_by(col(Response.review_uncertainty).is_(None), col(Response.review_uncertainty).desc(),
                  col(Response.created_at).desc())
        .limit(limit)
    )
    return list(session.exec(query).all())


def _judged_by(session: Session, reviewer: User, ids: list[uuid.UUID]) -> set[uuid.UUID]:
    rated = session.exec(select(Rating.response_id).where(Rating.user_id == reviewer.id, col(Rating.response_id).in_(ids)))
    corrected = session.exec(select(Correction.response_id).where(Correction.user_id == reviewer.id,
                                                                  col(Correction.response_id).in_(ids)))
    compared = session.exec(select(Comparison.response_a_id, Comparison.response_b_id).where(
        Comparison.user_id == reviewer.id, col(Comparison.response_a_id).in_(ids)))
    return set(rated) | set(corrected) | {i for pair in compared for i in pair}


def _task(session: Session, kind: Literal["compare", "rate"], responses: list[Response]) -> ReviewTask:
    messages = conversations.conversation_messages(session, conversation_id=responses[0].conversation_id)
    prompt = next(m for m in messages if m.id == responses[0].prompt_message_id)
    history = [(m.role.value, m.content) for m in messages
               if m.id < prompt.id and m.role in (MessageRole.user, MessageRole.assistant)]
    return ReviewTask(kind, prompt, history, responses)


def agreement(session: Session, reviewer: User) -> tuple[int, int]:
    """(agreed, shared): of the items this reviewer judged that other staff judged too, how many
    got the same verdict: the same winner of a pair (whichever way round it was stored), or the
    same thumb on an answer. Two queries, whatever the reviewer's history."""
    mine, other = aliased(Comparison), aliased(Comparison)
    same_pair = or_(and_(other.response_a_id == mine.response_a_id, other.response_b_id == mine.response_b_id),
                    and_(other.response_a_id == mine.response_b_id, other.response_b_id == mine.response_a_id))
    pairs = session.exec(
        select(mine, other).join(other, and_(same_pair, other.user_id != mine.user_id))
        .join(User, col(User.id) == other.user_id).where(mine.user_id == reviewer.id, col(User.role).in_(STAFF))
    ).all()
    my_rating, other_rating = aliased(Rating), aliased(Rating)
    thumbs = session.exec(
        select(my_rating.thumb, other_rating.thumb)
        .join(other_rating, and_(other_rating.response_id == my_rating.response_id,
                                 other_rating.user_id != my_rating.user_id))
        .join(User, col(User.id) == other_rating.user_id)
        .where(my_rating.user_id == reviewer.id, col(User.role).in_(STAFF),
               col(my_rating.thumb).is_not(None), col(other_rating.thumb).is_not(None))
    ).all()
    agreed = sum(_winning(a) == _winning(b) for a, b in pairs) + sum(a == b for a, b in thumbs)
    return agreed, len(pairs) + len(thumbs)


def _winning(comparison: Comparison) -> str:
    """The verdict on a pair, independent of which answer was stored as `a`."""
    if comparison.winner == Winner.a:
        return str(comparison.response_a_id)
    if comparison.winner == Winner.b:
        return str(comparison.response_b_id)
    return comparison.winner.value
