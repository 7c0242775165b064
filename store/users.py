"""People and their bearer tokens: only a token's hash is kept."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import bindparam
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from store.models import Role, User

TOKEN_PREFIX = "tl-"  # how a tuneloop token is told from another system's key (a client's placeholder)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def is_tuneloop_token(token: str) -> bool:
    return token.startswith(TOKEN_PREFIX)


def get_or_create_user(session: Session, *, external_id: str, name: str, role: Role = Role.user) -> User:
    query = select(User).where(User.external_id == external_id)
    user = session.exec(query).first()
    if user is not None:
        return user
    try:
        with session.begin_nested():  # a concurrent first contact may create the same user
            user = User(external_id=external_id, name=name, role=role)
            session.add(user)
    except IntegrityError:
        user = session.exec(query).one()
    return user


def issue_token(session: Session, *, user: User) -> str:
    """Give the user a new bearer token (the old one stops working); only its hash is kept."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    user.token_hash = hash_token(token)
    session.add(user)
    session.flush()
    return token


def user_by_token(session: Session, *, token: str) -> User | None:
    return session.exec(select(User).where(User.token_hash == hash_token(token))).first()


# The batch lookups below are built once: building a statement costs more Python time
# than running it, and the feedback writer runs them for every batch.
_USERS_BY_TOKEN_HASH = select(User).where(col(User.token_hash).in_(bindparam("hashes", expanding=True)))


def users_by_token_hash(session: Session, *, token_hashes: set[str]) -> dict[str, User]:
    users = session.exec(_USERS_BY_TOKEN_HASH, params={"hashes": list(token_hashes)}).all()
    return {user.token_hash: user for user in users}
