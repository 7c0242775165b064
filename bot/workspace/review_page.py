"""The reviewer's queue in the browser: one item at a time, least certain first (the order of
the JSON queue, `feedback.review`), with the conversation so far. A pair is shown side by side
in an order drawn once per reviewer and item (and stored with the choice); a single answer gets
thumbs (with a reason) and stars; any answer can be corrected ("write the ideal answer", beside
the original). Every action has a keyboard shortcut shown on the page; skip keeps an item for
later in this session. What is written is the same row the feedback API writes, redacted alike.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, time

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import func
from sqlmodel import Session, select

from bot.workspace.auth import check_csrf, render, signed_in
from feedback import review
from feedback.deps import SessionDep
from feedback.protocol import DOWN_REASONS
from feedback.router import redactor
from store import conversations, judgments
from store.models import Comparison, Correction, Rating, Thumb, User, Winner

router = APIRouter(prefix="/review", include_in_schema=False)
SKIPPED = "review_skipped"  # response ids skipped in this browser session


@router.get("", response_class=HTMLResponse)
def review_page(request: Request, session: SessionDep) -> HTMLResponse:
    reviewer = signed_in(request, session)
    skipped = set(request.session.get(SKIPPED, []))
    tasks = [t for t in review.queue(session, reviewer, 50) if not {str(r.id) for r in t.responses} & skipped]
    task = tasks[0] if tasks else None
    shown = _order(reviewer, task) if task else []
    return render(request, "review.html", user=reviewer, task=task, shown=shown, left=len(tasks),
                  done=_done_today(session, reviewer), reasons=DOWN_REASONS)


@router.post("/judge")
def judge(request: Request, session: SessionDep, csrf: str = Form(""), action: str = Form(""),
          response_id: str = Form(""), first: str = Form(""), second: str = Form(""), reason: str = Form(""),
          stars: int = Form(0), text: str = Form("")) -> RedirectResponse:
    check_csrf(request, csrf)
    reviewer = signed_in(request, session)
    if action == "skip":
        request.session[SKIPPED] = [*request.session.get(SKIPPED, []), response_id or first]
        return RedirectResponse("/review", status_code=303)
    try:
        request.session["flash"] = _write(request, session, reviewer, action, response_id, first, second, reason,
                                          stars, text)
        session.commit()
    except ValueError as refused:
        session.rollback()
        request.session["flash"] = f"Nothing was saved: {refused}"
    return RedirectResponse("/review", status_code=303)


def _write(request: Request, session: Session, reviewer: User, action: str, response_id: str, first: str,
           second: str, reason: str, stars: int, text: str) -> str:
    if action in ("first", "second", "tie", "both_bad"):
        a, b = (conversations.visible_response(session, user=reviewer, response_id=_id(x)) for x in (first, second))
        winner = {"first": Winner.a, "second": Winner.b, "tie": Winner.tie, "both_bad": Winner.both_bad}[action]
        judgments.save_comparison(session, user=reviewer, response_a=a, response_b=b, winner=winner, a_position=0)
        return "Choice saved."
    response = conversations.visible_response(session, user=reviewer, response_id=_id(response_id))
    if action in ("up", "down"):
        if action == "down" and reason not in DOWN_REASONS:
            raise ValueError(f"a thumbs down needs a reason: one of {', '.join(DOWN_REASONS)}")
        judgments.save_rating(session, user=reviewer, response=response, thumb=Thumb(action),
                              reason=reason if action == "down" else None)
        return "Rating saved."
    if action == "stars":
        if not 1 <= stars <= 5:
            raise ValueError("stars go from 1 to 5")
        judgments.save_rating(session, user=reviewer, response=response, stars=stars)
        return "Stars saved."
    if action == "correct":
        if not text.strip():
            raise ValueError("write the ideal answer first")
        judgments.add_correction(session, user=reviewer, response=response, text=redactor(request)(text), comment=None)
        return "Correction saved."
    raise ValueError(f"unknown action {action!r}")


def _id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as error:
        raise ValueError("that answer id is not valid") from error


def _order(reviewer: User, task: review.ReviewTask) -> list:
    """A pair's order for this reviewer: drawn from the reviewer and the answers, so it stays put
    on reload and differs between reviewers (position bias averages out)."""
    answers = list(task.responses)
    random.Random(f"{reviewer.id}:{':'.join(sorted(str(r.id) for r in answers))}").shuffle(answers)
    return answers


def _done_today(session: Session, reviewer: User) -> int:
    midnight = datetime.combine(datetime.now(UTC).date(), time(), tzinfo=UTC)
    return sum(session.exec(select(func.count()).select_from(model).where(
        model.user_id == reviewer.id, model.created_at >= midnight)).one() for model in (Rating, Comparison, Correction))
