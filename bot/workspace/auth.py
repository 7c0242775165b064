"""Sign-in for reviewers and operators, with the token `tuneloop users add` printed.

The token is exchanged for a session cookie (Starlette's SessionMiddleware: signed with
itsdangerous, HttpOnly, SameSite=Strict, Secure behind HTTPS) that holds the user's id, the hash
of the token they signed in with (a replaced token signs them out) and a CSRF token. Every form
carries that CSRF token and every action checks it; roles are checked on the server for every
page and action. End users (role `user`) have no workspace.
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlmodel import Session

from feedback.deps import SessionDep
from store import users
from store.models import STAFF, Role, User

HERE = Path(__file__).parent
templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape())
router = APIRouter(include_in_schema=False)
COOKIE = "tuneloop_workspace"


class SignInRequired(Exception):
    """No signed-in staff member: pages send the browser to /signin."""


class NotAllowed(Exception):
    """Signed in, without the role this needs."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def csrf_token(request: Request) -> str:
    """This browser session's CSRF token (made on first use)."""
    if "csrf" not in request.session:
        request.session["csrf"] = secrets.token_urlsafe(32)
    return request.session["csrf"]


def check_csrf(request: Request, sent: str) -> None:
    expected = request.session.get("csrf", "")
    if not expected or not hmac.compare_digest(sent or "", expected):
        raise NotAllowed("This form is out of date or was not sent from this workspace (CSRF check failed): "
                         "reload the page and try again.")


def signed_in(request: Request, session: Session, *roles: Role) -> User:
    """The signed-in user, if they have one of `roles` (default: any staff role)."""
    user = session.get(User, request.session.get("user_id", -1))
    if user is None or user.token_hash is None or user.token_hash != request.session.get("token_hash"):
        raise SignInRequired
    if user.role not in (roles or STAFF):
        wanted = " or ".join(role.value for role in roles or STAFF)
        raise NotAllowed(f"This page is for {wanted}s; you are signed in as {user.name} ({user.role.value}).")
    return user


def render(request: Request, template: str, status_code: int = 200, **values) -> HTMLResponse:
    user = values.pop("user", None)
    body = templates.get_template(template).render(request=request, csrf=csrf_token(request), user=user,
                                                   flash=request.session.pop("flash", None), **values)
    return HTMLResponse(body, status_code=status_code)


@router.get("/signin", response_class=HTMLResponse)
def signin_page(request: Request) -> HTMLResponse:
    return render(request, "signin.html")


@router.post("/signin")
def signin(request: Request, session: SessionDep, token: str = Form(""), csrf: str = Form("")):  # noqa: ANN201
    check_csrf(request, csrf)
    user = users.user_by_token(session, token=token.strip())
    if user is None:
        return render(request, "signin.html", 401, error="That token is not valid. `tuneloop users add NAME "
                                                          "--role reviewer` prints one.")
    if user.role not in STAFF:
        return render(request, "signin.html", 403, error="Only reviewers and operators have a workspace.")
    request.session.clear()  # a new session for a new sign-in (no fixation)
    request.session.update({"user_id": user.id, "token_hash": user.token_hash, "csrf": secrets.token_urlsafe(32)})
    return RedirectResponse("/releases" if user.role == Role.operator else "/review", status_code=303)


@router.post("/signout")
def signout(request: Request, csrf: str = Form("")) -> RedirectResponse:
    check_csrf(request, csrf)
    request.session.clear()
    return RedirectResponse("/signin", status_code=303)


def install(app) -> None:  # noqa: ANN001
    """The session cookie, the pages' error handling, and the routes."""
    from fastapi.staticfiles import StaticFiles
    from starlette.middleware.sessions import SessionMiddleware

    from bot.workspace import console, review_page

    settings = app.state.settings
    app.add_middleware(SessionMiddleware, secret_key=session_secret(settings.data_dir, settings.session_secret),
                       session_cookie=COOKIE, max_age=12 * 3600, same_site="strict",
                       https_only=settings.public_url.startswith("https://"))

    @app.exception_handler(SignInRequired)
    async def _sign_in(request: Request, _: SignInRequired) -> RedirectResponse:
        return RedirectResponse("/signin", status_code=303)

    @app.exception_handler(NotAllowed)
    async def _not_allowed(request: Request, error: NotAllowed) -> HTMLResponse:
        return render(request, "forbidden.html", 403, message=error.message)

    app.mount("/workspace/static", StaticFiles(directory=HERE / "static"), name="workspace-static")
    app.include_router(router)
    app.include_router(console.router)
    app.include_router(review_page.router)


def session_secret(data_dir: Path, configured: str | None) -> str:
    """TUNELOOP_SESSION_SECRET (the same on every replica), or one made once and kept in the data
    folder, readable only by its owner."""
    if configured:
        return configured
    path = Path(data_dir) / "session-secret"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip()
