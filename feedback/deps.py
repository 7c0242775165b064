"""FastAPI dependencies shared by every router: the database session and the caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy.engine import Engine
from sqlmodel import Session

from store import users
from store.models import User

ANONYMOUS_API_USER = "api:anonymous"


# These two do no I/O, so they are async: a sync dependency costs a hop to a worker
# thread and back, which measured as a sixth of a rating's server time.
async def get_database(request: Request) -> Engine:
    return request.app.state.database


async def get_session(database: Annotated[Engine, Depends(get_database)]) -> AsyncIterator[Session]:
    session = Session(database, expire_on_commit=False)
    try:
        yield session
    finally:
        session.close()  # the endpoint has committed or rolled back: nothing is held by now


SessionDep = Annotated[Session, Depends(get_session)]


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        return None
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "Authorization must be 'Bearer <token>'")
    return token.strip()


def _token_or_401(request: Request) -> str:
    token = bearer_token(request)
    if token is None:
        raise HTTPException(401, "Send 'Authorization: Bearer <token>' (the widget gets one from POST /api/session)")
    return token


async def required_token(request: Request) -> str:
    return _token_or_401(request)


def current_user(request: Request, session: SessionDep) -> User:
    """The caller, by bearer token. A token that matches nobody is refused, never ignored."""
    user = users.user_by_token(session, token=_token_or_401(request))
    if user is None:
        raise HTTPException(401, "Unknown or revoked token")
    return _release_connection(session, user)


def _release_connection(session: Session, user: User) -> User:
    """End the lookup's transaction so no pooled connection is held while the request waits
    for its endpoint to get a thread; the loaded user stays readable, detached."""
    session.expunge(user)
    session.close()
    return user


def api_user(request: Request, session: SessionDep) -> User:
    """The OpenAI API's caller: a tuneloop token's user, else (if allowed) the shared anonymous one.

    OpenAI's clients always send a key ("unused", "EMPTY", "sk-..."), so a key that is not a
    tuneloop token (`users.TOKEN_PREFIX`) is a client's placeholder, not a failed sign-in; a
    tuneloop token that matches nobody (revoked, mistyped) is refused, never ignored.
    """
    token = bearer_token(request)
    if token is not None and users.is_tuneloop_token(token):
        return current_user(request, session)
    if not request.app.state.settings.allow_anonymous_api:
        raise HTTPException(401, f"This API needs a tuneloop token ({users.TOKEN_PREFIX}...): ask an operator for "
                                 "one (`tuneloop users add NAME`)")
    user = users.get_or_create_user(session, external_id=ANONYMOUS_API_USER, name="anonymous API user")
    session.commit()
    return _release_connection(session, user)


CurrentUser = Annotated[User, Depends(current_user)]
# The token alone, for endpoints that look the caller up in their own batch (ratings).
BearerToken = Annotated[str, Depends(required_token)]
ApiUser = Annotated[User, Depends(api_user)]
