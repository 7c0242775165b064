"""Release approval over HTTP, for operators only; the same calls the CLI and Slack make."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError

from feedback import canary_plot
from feedback.deps import CurrentUser, SessionDep, current_user
from feedback.protocol import error_responses
from serving import canary
from store import releases
from store.models import Release, ReleaseState, Role, User

router = APIRouter(prefix="/api/releases", tags=["releases"])


def operator(user: CurrentUser) -> User:
    if user.role != Role.operator:
        raise HTTPException(403, "Only operators may do this; `tuneloop users add NAME --role operator` makes one")
    return user


Operator = Annotated[User, Depends(operator)]


class ApproveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    canary: float | None = Field(default=None, gt=0, le=1, description="share of conversations; none: all")


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="", max_length=2000)


class ReleaseOut(BaseModel):
    name: str
    state: str
    canary_share: float
    base_model: str
    checksum: str | None
    training_run_id: int | None
    gate: str | None
    win_rate: float | None
    instruction: str | None = None  # the style instruction its answers are written under


def summary(release: Release) -> ReleaseOut:
    report = release.report or {}
    win = (report.get("evaluation") or {}).get("win_rate") or {}
    return ReleaseOut(name=release.name, state=release.state.value, canary_share=release.canary_share,
                      base_model=release.base_model, checksum=release.checksum,
                      training_run_id=release.training_run_id,
                      gate=(report.get("gate") or {}).get("summary"), win_rate=win.get("rate"),
                      instruction=release.instruction)


def _act(request: Request, session: SessionDep, action) -> ReleaseOut:  # noqa: ANN001
    release = action()  # ReleaseNotFound: a 404, ReleaseError: a 409 (tuneloop/http.py)
    try:
        session.commit()
    except IntegrityError as error:  # another operator's action won the race: the store allows one of each
        session.rollback()
        raise HTTPException(409, "another release action just changed which release is active or canary; "
                                 "look again (GET /api/releases) and retry") from error
    reconciler = getattr(request.app.state, "reconciler", None)
    if reconciler is not None:  # this replica follows now; the others at their next poll
        reconciler.wake()
    return summary(release)


ACTION_ERRORS = error_responses(401, 403, 404, 409, 413, 422)


@router.get("", response_model=list[ReleaseOut], responses=error_responses(401, 403))
def list_releases(session: SessionDep, _: Operator) -> list[ReleaseOut]:
    return [summary(r) for r in releases.listing(session)]


# Before /{name}: a request for another method on /promote must be told it is POST only.
@router.post("/promote", response_model=ReleaseOut, responses=ACTION_ERRORS)
def promote(request: Request, session: SessionDep, user: Operator) -> ReleaseOut:
    return _act(request, session, lambda: releases.promote(session, user))


@router.post("/rollback", response_model=ReleaseOut, responses=ACTION_ERRORS)
def rollback(request: Request, session: SessionDep, user: Operator, body: ReasonIn | None = None) -> ReleaseOut:
    return _act(request, session, lambda: releases.rollback(session, user, reason=body.reason if body else ""))


@router.get("/{name}", responses=error_responses(401, 403, 404))
def show_release(name: str, request: Request, session: SessionDep, _: Operator) -> dict:
    """The release, its report and its checks' outcomes; for the running canary, its live
    evidence now (`canary`): per-release metrics with intervals, each test's statistic against
    its boundary, and the expected time to a decision at today's traffic."""
    release = releases.get(session, name)
    checks = releases.check_outcomes(session, release_id=release.id)
    body = {**summary(release).model_dump(), "report": release.report, "checks": checks}
    active = releases.active_release(session)
    if release.state == ReleaseState.canary and active is not None:
        _, status = canary.current(session, release, active, request.app.state.canary.policy)
        body["canary"] = {**status, "history": (release.report.get("canary") or {}).get("history", [])}
    return body


def report_reader(request: Request, name: str, session: SessionDep, key: str | None = None) -> None:
    """An operator, or anyone holding the report's shared key (from the link posted to operators)."""
    if key is not None:
        release = releases.get(session, name)
        shared = (release.report or {}).get(releases.REPORT_KEY)
        if shared and secrets.compare_digest(key, shared):
            return
        raise HTTPException(403, "This report link's key is not valid; ask an operator for the current link")
    operator(current_user(request, session))


@router.get("/{name}/report", response_class=FileResponse, dependencies=[Depends(report_reader)],
            responses={200: {"content": {"text/html": {}}}, **error_responses(401, 403, 404)})
def release_report(name: str, session: SessionDep) -> Response:
    """The HTML report the trainer wrote beside the release's adapter."""
    release = releases.get(session, name)
    page = Path(release.adapter_path).parent / "report.html" if release.adapter_path else None
    if page is None or not page.is_file():
        raise HTTPException(404, f"release {name!r} has no report page")
    status = (release.report or {}).get("canary")
    if not status:
        return FileResponse(page, media_type="text/html")
    # The page was written at training time; a canary's evidence came later: its section is added here.
    html = page.read_text(encoding="utf-8")
    return HTMLResponse(html.replace("</body>", canary_plot.html_section(status) + "</body>", 1))


@router.post("/{name}/approve", response_model=ReleaseOut, responses=ACTION_ERRORS)
def approve(name: str, request: Request, session: SessionDep, user: Operator,
            body: ApproveIn | None = None) -> ReleaseOut:
    canary = body.canary if body else None
    return _act(request, session, lambda: releases.approve(session, name, user, canary=canary))


@router.post("/{name}/reject", response_model=ReleaseOut, responses=ACTION_ERRORS)
def reject(name: str, request: Request, session: SessionDep, user: Operator,
           body: ReasonIn | None = None) -> ReleaseOut:
    return _act(request, session, lambda: releases.reject(session, name, user, reason=body.reason if body else ""))
