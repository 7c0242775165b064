"""Health for orchestrators: `/healthz` (the process answers) and `/readyz` (it should get traffic).

Ready means every part a request needs works right now: the store answers, the engine is
loaded, and the release it serves is loaded with the adapter whose checksum serving verified
when it loaded it (the reconciler refuses any other), with the reconciler still following the
store. Either answers in a second or two; `/readyz` says which part is not ready.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

router = APIRouter(include_in_schema=False)
STALE_AFTER = 10  # reload intervals without a successful reconcile before serving counts as stuck


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    checks = {"store": _store(state), "engine": _engine(state), "release": _release(state)}
    ready = all(check == "ok" for check in checks.values())
    return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503)


def _store(state) -> str:  # noqa: ANN001
    try:
        with state.database.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:  # the answer is the point: say what failed
        return f"unreachable: {type(error).__name__}"
    return "ok"


def _engine(state) -> str:  # noqa: ANN001
    engine = getattr(state, "engine", None)
    return "ok" if engine is not None and getattr(engine, "started", True) else "not loaded"


def _release(state) -> str:  # noqa: ANN001
    live, reconciler = getattr(state, "live", None), getattr(state, "reconciler", None)
    if live is None or live.active is None:
        return "no active release loaded yet"
    if live.active.adapter is not None and live.active.adapter not in state.engine.adapters():
        return f"release {live.active.name}'s adapter is not loaded"
    last = getattr(reconciler, "last_read", None)
    if last is None or time.monotonic() - last > STALE_AFTER * max(reconciler.interval, 1.0):
        return "not following the store (no reconcile lately)"
    return "ok"
