"""The operator's console: the releases and the last run's curation summary, one release with its
report and the actions its state allows (each confirmed in the browser, checked for CSRF and
role here, audited by the store), the live canary, and the audit log. The same calls the HTTP API, the CLI and Slack make."""

from __future__ import annotations

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from bot.workspace.auth import check_csrf, render, signed_in
from feedback.deps import SessionDep
from serving import canary
from store import releases
from store.models import AuditLog, Release, ReleaseState, Role

router = APIRouter(prefix="/releases", include_in_schema=False)
AUDIT_ROWS = 200

# What each state allows, in the order the page shows them.
ACTIONS = {
    ReleaseState.candidate: ("approve", "canary", "reject"),
    ReleaseState.canary: ("promote", "rollback"),
    ReleaseState.active: ("rollback",),
    ReleaseState.rolled_back: ("approve", "canary"),
}


@router.get("", response_class=HTMLResponse)
def console(request: Request, session: SessionDep) -> HTMLResponse:
    user = signed_in(request, session, Role.operator)
    listed = releases.listing(session)
    last_run = next((r for r in listed if (r.report or {}).get("curation")), None)  # newest first
    curation = last_run.report["curation"] if last_run else None
    return render(request, "releases.html", user=user, releases=[_row(r) for r in listed], curation=curation,
                  curation_release=last_run.name if last_run else None,
                  agreement=_flatten((curation or {}).get("agreement") or {}))


@router.get("/audit", response_class=HTMLResponse)
def audit_log(request: Request, session: SessionDep, action: str = "", target: str = "") -> HTMLResponse:
    user = signed_in(request, session, Role.operator)
    query = select(AuditLog).order_by(col(AuditLog.id).desc()).limit(AUDIT_ROWS)
    if action:
        query = query.where(col(AuditLog.action).startswith(action))
    if target:
        query = query.where(col(AuditLog.target).contains(target))
    actions = sorted(set(session.exec(select(AuditLog.action).distinct())))
    return render(request, "audit.html", user=user, entries=list(session.exec(query)), actions=actions,
                  action=action, target=target)


@router.get("/{name}", response_class=HTMLResponse)
def release_page(name: str, request: Request, session: SessionDep) -> HTMLResponse:
    user = signed_in(request, session, Role.operator)
    release = releases.get(session, name)  # ReleaseNotFound: a 404 (tuneloop/http.py)
    report_url = None
    if release.adapter_path:
        report_url = f"/api/releases/{name}/report?key={releases.share_report(session, release=release)}"
        session.commit()
    live = None
    active = releases.active_release(session)
    if release.state == ReleaseState.canary and active is not None:
        _, live = canary.current(session, release, active, request.app.state.canary.policy)
    return render(request, "release.html", user=user, release=_row(release), actions=ACTIONS.get(release.state, ()),
                  report_url=report_url, live=live, default_share=request.app.state.settings.slack_canary_share)


@router.post("/{name}/actions")
def act(name: str, request: Request, session: SessionDep, action: str = Form(""), csrf: str = Form(""),
        share: float = Form(0.2), reason: str = Form("")) -> RedirectResponse:
    check_csrf(request, csrf)  # before anything else: a forged post changes nothing
    user = signed_in(request, session, Role.operator)
    release = releases.get(session, name)
    if action not in ACTIONS.get(release.state, ()):
        request.session["flash"] = f"{name} is {release.state.value}: it cannot be {action or 'acted on'} now."
        return RedirectResponse(f"/releases/{name}", status_code=303)
    steps = {
        "approve": lambda: releases.approve(session, name, user),
        "canary": lambda: releases.approve(session, name, user, canary=share),
        "reject": lambda: releases.reject(session, name, user, reason=reason),
        "promote": lambda: releases.promote(session, user),
        "rollback": lambda: releases.rollback(session, user, reason=reason),
    }
    try:
        done = steps[action]()
        session.commit()
        request.session["flash"] = f"{done.name} is now {done.state.value}."
    except releases.ReleaseError as refused:
        session.rollback()
        request.session["flash"] = str(refused)
    except IntegrityError:
        session.rollback()
        request.session["flash"] = "Another operator just changed which release is active or canary; look again."
    request.app.state.reconciler.wake()  # this replica follows now; the others at their next poll
    return RedirectResponse(f"/releases/{name}", status_code=303)


def _row(release: Release) -> dict:
    report = release.report or {}
    win = (report.get("evaluation") or {}).get("win_rate") or {}
    return {"name": release.name, "state": release.state.value, "share": release.canary_share,
            "gate": (report.get("gate") or {}).get("summary", ""), "win_rate": win.get("rate"),
            "win_low": win.get("low"), "win_high": win.get("high"), "created_at": release.created_at,
            "decision": (report.get("canary") or {}).get("decision")}


def _flatten(value: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested figures (agreement per reviewer, per kind) as (dotted name, value) rows."""
    rows: list[tuple[str, object]] = []
    for key, inner in value.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        rows += _flatten(inner, name) if isinstance(inner, dict) else [(name, inner)]
    return rows
