"""The feedback API: ratings, A/B choices and corrections, each safe to retry."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Path, Request
from fastapi.responses import JSONResponse, Response

from feedback import privacy
from feedback.deps import BearerToken, CurrentUser, SessionDep
from feedback.idempotency import MAX_KEY_LENGTH, Reply, check_key, run_once
from feedback.ingest import RatingRequest
from feedback.protocol import (
    error_responses,
    ComparisonIn,
    ComparisonOut,
    CorrectionIn,
    CorrectionOut,
    RatingIn,
    RatingOut,
)
from feedback.redaction import Redact, keep, redact_optional
from store import conversations, judgments
from store.models import User

router = APIRouter(prefix="/api/feedback", tags=["feedback"])
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=MAX_KEY_LENGTH,
                                             description="a retry with the same key replays the first answer")]

WRITE_ERRORS = error_responses(401, 404, 409, 413, 422, 503)


@router.post("/ratings", status_code=201, responses=WRITE_ERRORS, response_model=RatingOut)
async def rate(body: RatingIn, request: Request, token: BearerToken, key: IdempotencyKey = None):
    # The hot path: no worker thread; the caller is looked up with the rest of the batch. Only a
    # comment (free text, so possibly personal) takes a thread, for its redaction.
    check_key(key)
    if body.comment:
        comment = await asyncio.to_thread(redactor(request), body.comment)
        body = body.model_copy(update={"comment": comment})
    return _json(await request.app.state.ratings.rate(RatingRequest(token, body, key)))


def _json(reply: Reply) -> JSONResponse:
    return JSONResponse(reply.body, status_code=reply.status_code, headers=reply.headers)


def redactor(request: Request) -> Redact:
    """What every free text passes before it is stored (feedback/redaction.py); it fails closed."""
    return getattr(request.app.state, "redact", keep)


@router.post("/comparisons", status_code=201, responses=WRITE_ERRORS, response_model=ComparisonOut)
def compare(body: ComparisonIn, request: Request, session: SessionDep, user: CurrentUser, key: IdempotencyKey = None):
    def store() -> tuple[int, dict]:
        a = conversations.visible_response(session, user=user, response_id=body.response_a_id)
        b = conversations.visible_response(session, user=user, response_id=body.response_b_id)
        if a.prompt_message_id != b.prompt_message_id:
            raise HTTPException(422, "response_a_id and response_b_id must answer the same prompt")
        comparison = judgments.save_comparison(session, user=user, response_a=a, response_b=b, winner=body.winner,
                                               a_position=body.a_position)
        return 201, ComparisonOut.model_validate(comparison, from_attributes=True).model_dump(mode="json")

    reply = run_once(session, user, key, "comparisons", body, store)
    _tell(request, reply, "comparison", [body.response_a_id, body.response_b_id], user, {"winner": body.winner.value})
    return _json(reply)


@router.post("/corrections", status_code=201, responses=WRITE_ERRORS, response_model=CorrectionOut)
def correct(body: CorrectionIn, request: Request, session: SessionDep, user: CurrentUser, key: IdempotencyKey = None):
    def store() -> tuple[int, dict]:
        response = conversations.visible_response(session, user=user, response_id=body.response_id)
        redact = redactor(request)
        correction = judgments.add_correction(session, user=user, response=response, text=redact(body.text),
                                              comment=redact_optional(redact, body.comment))
        return 201, CorrectionOut.model_validate(correction, from_attributes=True).model_dump(mode="json")

    reply = run_once(session, user, key, "corrections", body, store)
    _tell(request, reply, "correction", [body.response_id], user, {})
    return _json(reply)


# A row id is a signed 64-bit integer in both stores; a bigger one cannot name a row, and SQLite
# would refuse to bind it (a 500), so the path says so with a 422.
RowId = Annotated[int, Path(ge=1, le=2**63 - 1, description="the id the feedback route returned")]


@router.delete("/{kind}/{item_id}", status_code=204, responses=error_responses(401, 404, 422))
def withdraw(kind: privacy.Kind, item_id: RowId, session: SessionDep, user: CurrentUser) -> Response:
    """Take back one of your own ratings, A/B choices or corrections: it leaves the store and
    every dataset built after."""
    privacy.withdraw(session, user, kind, item_id)  # NotFound: a 404 (tuneloop/http.py)
    session.commit()
    return Response(status_code=204)


def _tell(request: Request, reply: Reply, kind: str, ids: list[uuid.UUID], user: User, details: dict) -> None:
    """Tell whoever listens (plugins) of feedback that was stored just now, not of a replay."""
    notify = getattr(request.app.state, "notify_feedback", None)
    if notify is not None and reply.status_code == 201 and not reply.replayed:
        notify(kind, [str(i) for i in ids], user.id, details)
