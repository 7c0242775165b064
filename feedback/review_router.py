"""The reviewers' queue over HTTP, for reviewers and operators.

- `GET /api/review/queue?limit=N`: the caller's next N tasks in the order they are handed
  out (pairs first, then single answers the reward model is least sure about, unscored
  last), with how the live scorer is doing.
- `GET /api/review/next`: the caller's next task in full, the one Slack's `/tuneloop review`
  sends; 204 when there is nothing to review.

Judging goes through the feedback routes (`/api/feedback/ratings`, `.../comparisons`, `.../corrections`).
"""

from __future__ import annotations

import uuid
from dataclasses import asdict
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel
from sqlmodel import Session, col, select

from feedback import review
from feedback.deps import CurrentUser, SessionDep
from feedback.protocol import UtcDatetime, error_responses
from store.models import STAFF, Release, User

router = APIRouter(prefix="/api/review", tags=["review"])
PROMPT_CHARS = 200  # the queue shows the start of each prompt


def staff(user: CurrentUser) -> User:
    if user.role not in STAFF:
        raise HTTPException(403, "Only reviewers and operators see the review queue; "
                                 "`tuneloop users add NAME --role reviewer` makes a reviewer")
    return user


Reviewer = Annotated[User, Depends(staff)]


class QueueItem(BaseModel):
    kind: Literal["compare", "rate"]
    response_ids: list[uuid.UUID]
    prompt: str  # at most PROMPT_CHARS characters
    uncertainty: float | None  # the reward model's doubt, in (0, 1]; of a pair, its less certain answer
    scored_by: str | None  # the release whose reward model gave it; None: not scored
    created_at: UtcDatetime  # of the (newest) answer


class ScorerOut(BaseModel):
    release: str | None  # whose reward model scores new answers now; None: none does
    pending: int
    scored: int
    dropped: int
    failed: int


class QueueOut(BaseModel):
    items: list[QueueItem]
    scorer: ScorerOut | None  # None when live scoring is off


class AnswerOut(BaseModel):
    id: uuid.UUID
    text: str
    uncertainty: float | None
    scored_by: str | None
    created_at: UtcDatetime


class TaskOut(BaseModel):
    kind: Literal["compare", "rate"]
    prompt: str
    prompt_message_id: int
    conversation_id: uuid.UUID
    history: list[tuple[str, str]]  # (role, text) before the prompt
    answers: list[AnswerOut]  # one to rate, or the pair (show it in a random order, and send the positions)


@router.get("/queue", response_model=QueueOut, responses=error_responses(401, 403, 422))
def review_queue(request: Request, session: SessionDep, reviewer: Reviewer,
                 limit: Annotated[int, Query(ge=1, le=100)] = 20) -> QueueOut:
    tasks = review.queue(session, reviewer, limit)
    names = _release_names(session, tasks)
    items = [QueueItem(kind=t.kind, response_ids=[r.id for r in t.responses], prompt=_short(t.prompt.content),
                       uncertainty=t.uncertainty, scored_by=_scored_by(t, names), created_at=t.created_at)
             for t in tasks]
    scorer = getattr(request.app.state, "review_scorer", None)
    return QueueOut(items=items, scorer=ScorerOut(**asdict(scorer.stats())) if scorer is not None else None)


@router.get("/next", response_model=TaskOut,
            responses={204: {"description": "nothing to review"}, **error_responses(401, 403, 422)})
def next_review_task(session: SessionDep, reviewer: Reviewer):
    task = review.next_task(session, reviewer)
    if task is None:
        return Response(status_code=204)
    names = _release_names(session, [task])
    return TaskOut(kind=task.kind, prompt=task.prompt.content, prompt_message_id=task.prompt.id,
                   conversation_id=task.prompt.conversation_id, history=task.history,
                   answers=[AnswerOut(id=r.id, text=r.text, uncertainty=r.review_uncertainty,
                                      scored_by=names.get(r.review_scorer_release_id), created_at=r.created_at)
                            for r in task.responses])


def _release_names(session: Session, tasks: list[review.ReviewTask]) -> dict[int, str]:
    ids = {r.review_scorer_release_id for t in tasks for r in t.responses if r.review_scorer_release_id is not None}
    if not ids:
        return {}
    return dict(session.exec(select(Release.id, Release.name).where(col(Release.id).in_(ids))).all())


def _scored_by(task: review.ReviewTask, names: dict[int, str]) -> str | None:
    """The release that scored the task's most uncertain answer."""
    scored = [r for r in task.responses if r.review_uncertainty is not None]
    if not scored:
        return None
    return names.get(max(scored, key=lambda r: r.review_uncertainty).review_scorer_release_id)


def _short(text: str) -> str:
    return text if len(text) <= PROMPT_CHARS else text[: PROMPT_CHARS - 1] + "…"
