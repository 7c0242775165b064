"""Database engines and sessions for SQLite (embedded default) and PostgreSQL (at scale)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, create_engine


def normalize_url(url: str) -> str:
    """Point plain PostgreSQL URLs at psycopg 3, the driver we ship."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


# As many pooled connections as FastAPI runs sync endpoints at once (anyio's default of
# 40 threads): a smaller pool makes requests queue for a connection and churns overflow
# connections (a new PostgreSQL backend each time) under load.
POOL_SIZE = 40


# The dialects' own INSERT, which has ON CONFLICT (SQLite and PostgreSQL both do).
DIALECT_INSERT = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def dialect_insert(session: Session, table):  # noqa: ANN001, ANN201 - a model or a Table in, an Insert out
    return DIALECT_INSERT[session.get_bind().dialect.name](table)


def make_engine(url: str, **kwargs) -> Engine:
    url = normalize_url(url)
    parsed = make_url(url)
    kwargs.setdefault("pool_size", POOL_SIZE)
    if parsed.get_backend_name() == "sqlite":
        kwargs.setdefault("max_overflow", 0)
        return _sqlite_engine(url, parsed.database, **kwargs)
    kwargs.setdefault("max_overflow", 10)
    return create_engine(url, pool_pre_ping=True, **kwargs)


def _sqlite_engine(url: str, database: str | None, **kwargs) -> Engine:
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record):  # noqa: ANN001
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    _one_writer_at_a_time(engine)
    return engine


_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLAC")


def _one_writer_at_a_time(engine: Engine) -> None:
    """Queue this process's SQLite writers on a lock instead of SQLite's busy handler.

    SQLite allows one writer; the others poll with sleeps of up to 100 ms and no
    fairness, which under a burst of concurrent feedback gave a p99 near a second.
    A transaction takes the lock at its first write and gives it back at commit or
    rollback (or when the pool resets the connection). Other processes still meet
    at SQLite's own lock, as before.
    """
    lock = threading.Lock()

    @event.listens_for(engine, "before_cursor_execute")
    def _take(connection, cursor, statement, *args):  # noqa: ANN001
        if not connection.info.get("writing") and statement.lstrip()[:6].upper() in _WRITES:
            lock.acquire()
            connection.info["writing"] = True

    def _give_back(info: dict) -> None:
        if info.pop("writing", False):
            lock.release()

    @event.listens_for(engine, "commit")
    def _committed(connection):  # noqa: ANN001
        _give_back(connection.info)

    @event.listens_for(engine, "rollback")
    def _rolled_back(connection):  # noqa: ANN001
        _give_back(connection.info)

    @event.listens_for(engine.pool, "reset")
    def _reset(dbapi_connection, connection_record, reset_state):  # noqa: ANN001
        _give_back(connection_record.info)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def dialect_of(session: Session) -> str:
    return session.get_bind().dialect.name
