"""The reviewer's queue in the browser: one item at a time, least certain first (the order of
the JSON queue, `feedback.review`), with the conversation so far. A pair is shown side by side
in an order drawn once per reviewer and item (and stored with the choice); a single answer gets
thumbs (with a reason) and stars; any answer can be corrected ("write the ideal answer", beside
the original). Every action has a keyboard shortcut shown on the page; skip keeps an item for
later in this session; undo withdraws the last judgment. Items are handed out so two reviewers do
not collide, but for the overlap share (`feedback.assignment`). What is written is the same row
the feedback API writes, redacted alike.
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
from feedback import assignment, privacy, review
from feedback.deps import SessionDep
from feedback.protocol import DOWN_REASONS
from feedback.router import redactor
from store import conversations, judgments
from store.errors import NotFound
from store.models import Comparison, Correction, Rating, Thumb, User, Winner

router = APIRouter(prefix="/review", include_in_schema=False)
SKIPPED = "review_skipped"  # response ids skipped in this browser session
ITEM = "review_item"  # the answers of the item on the reviewer's screen
LAST = "review_last"  # the last judgment saved, for undo


@router.get("", response_class=HTMLResponse)
def review_page(request: Request, session: SessionDep) -> HTMLResponse:
    reviewer = signed_in(request, session)
    share = request.app.state.settings.review_overlap_share
    skipped = set(request.session.get(SKIPPED, []))
    tasks = [t for t in review.queue(session, reviewer, 50)
             if not {str(r.id) for r in t.responses} & skipped
             and assignment.available(session, reviewer, [r.id for r in t.responses], share)]
    task = next((t for t in tasks if assignment.claim(session, reviewer, [r.id for r in t.responses], share)), None)
    session.commit()
    request.session[ITEM] = [str(r.id) for r in task.responses] if task else []
    agreed, shared = review.agreement(session, reviewer)
    return render(request, "review.html", user=reviewer, task=task, shown=_order(reviewer, task) if task else [],
                  left=len(tasks), done=_done_today(session, reviewer), reasons=DOWN_REASONS,
                  agreed=agreed, shared=shared, can_undo=bool(request.session.get(LAST)))


@router.post("/judge")
def judge(request: Request, session: SessionDep, csrf: str = Form(""), action: str = Form(""),
          response_id: str = Form(""), first: str = Form(""), second: str = Form(""), reason: str = Form(""),
          stars: int = Form(0), text: str = Form("")) -> RedirectResponse:
    check_csrf(request, csrf)
    reviewer = signed_in(request, session)
    if action == "skip":
        request.session[SKIPPED] = [*request.session.get(SKIPPED, []), response_id or first]
        return RedirectResponse("/review", status_code=303)
    if action == "undo":
        return _undo(request, session, reviewer)
    try:
        message, kind, row_id = _write(request, session, reviewer, action, response_id, first, second, reason,
                                       stars, text)
        if request.session.get(ITEM):
            assignment.keep(session, reviewer, request.session[ITEM], request.app.state.settings.review_overlap_share)
        session.commit()
        request.session["flash"], request.session[LAST] = message, {"kind": kind, "id": row_id}
    except ValueError as refused:
        session.rollback()
        request.session["flash"] = f"Nothing was saved: {refused}"
    return RedirectResponse("/review", status_code=303)


def _undo(request: Request, session: Session, reviewer: User) -> RedirectResponse:
    """Take back the last thing this reviewer saved in this session (as the API's withdraw does)."""
    last = request.session.pop(LAST, None)
    if last is None:
        request.session["flash"] = "Nothing to undo."
    else:
        try:
            privacy.withdraw(session, reviewer, last["kind"], last["id"])
            session.commit()
            request.session["flash"] = f"Undone: the {last['kind'][:-1]} is withdrawn."
        except NotFound:
            request.session["flash"] = "Nothing to undo: it is gone already."
    return RedirectResponse("/review", status_code=303)


def _write(request: Request, session: Session, reviewer: User, action: str, response_id: str, first: str,
           second: str, reason: str, stars: int, text: str) -> tuple[str, str, int]:
    """Save one judgment; (what to tell the reviewer, its kind as the withdraw route names it, its id)."""
    if action in ("first", "second", "tie", "both_bad"):
        a, b = (conversations.visible_response(session, user=reviewer, response_id=_id(x)) for x in (first, second))
        winner = {"first": Winner.a, "second": Winner.b, "tie": Winner.tie, "both_bad": Winner.both_bad}[action]
        saved = judgments.save_comparison(session, user=reviewer, response_a=a, response_b=b, winner=winner,
                                          a_position=0)
        return "Choice saved.", "comparisons", saved.id
    response = conversations.visible_response(session, user=reviewer, response_id=_id(response_id))
    if action in ("up", "down"):
        if action == "down" and reason not in DOWN_REASONS:
            raise ValueError(f"a thumbs down needs a reason: one of {', '.join(DOWN_REASONS)}")
        saved = judgments.save_rating(session, user=reviewer, response=response, thumb=Thumb(action),
                                      reason=reason if action == "down" else None)
        return "Rating saved.", "ratings", saved.id
    if action == "stars":
        if not 1 <= stars <= 5:
            raise ValueError("stars go from 1 to 5")
        saved = judgments.save_rating(session, user=reviewer, response=response, stars=stars)
        return "Stars saved.", "ratings", saved.id
    if action == "correct":
        if not text.strip():
            raise ValueError("write the ideal answer first")
        saved = judgments.add_correction(session, user=reviewer, response=response, text=redactor(request)(text),
                                         comment=None)
        return "Correction saved.", "corrections", saved.id
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
