"""Leases in the database: one holder of a named job at a time, on every process and machine
that shares the store (two nightly schedulers in two replicas, or a cron job beside them).

A lease expires unless its holder renews it, so a holder that dies (killed, machine lost)
frees the job for the next run after at most one lease; `held` renews in the background.
Written here rather than with PostgreSQL's advisory locks because SQLite must work too,
and a lease survives connection drops that would silently release a session lock.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from store.db import dialect_insert
from store.models import JobLock, utcnow

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=5)


class LockHeld(RuntimeError):
    """Someone else holds the job; the message says who and until when."""


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def acquire(session: Session, name: str, holder: str, lease: timedelta = LEASE) -> bool:
    """Take the lease if it is free or has expired; True if `holder` has it now."""
    now = utcnow()
    table = JobLock.__table__
    statement = dialect_insert(session, table).values(name=name, holder=holder, acquired_at=now, expires_at=now + lease)
    statement = statement.on_conflict_do_update(
        index_elements=["name"],
        set_={"holder": holder, "acquired_at": now, "expires_at": now + lease},
        where=table.c.expires_at < now,  # only a lease whose holder stopped renewing it
    ).returning(table.c.name)
    return session.execute(statement).first() is not None


def _dead_here(holder: str) -> bool:
    """A holder on this machine whose process is gone (killed mid-run): its lease need not be waited out."""
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, someone else's
    return False


def take_over(session: Session, name: str, dead: str, holder: str, lease: timedelta = LEASE) -> bool:
    """Take a lease from `dead` (exactly that holder, so two takers cannot both win)."""
    table = JobLock.__table__
    now = utcnow()
    done = session.execute(update(table).where(table.c.name == name, table.c.holder == dead)
                           .values(holder=holder, acquired_at=now, expires_at=now + lease))
    return done.rowcount == 1


def renew(session: Session, name: str, holder: str, lease: timedelta = LEASE) -> bool:
    table = JobLock.__table__
    done = session.execute(update(table).where(table.c.name == name, table.c.holder == holder)
                           .values(expires_at=utcnow() + lease))
    return done.rowcount == 1


def release(session: Session, name: str, holder: str) -> None:
    table = JobLock.__table__
    session.execute(delete(table).where(table.c.name == name, table.c.holder == holder))


def holder_of(session: Session, name: str) -> JobLock | None:
    return session.get(JobLock, name)


class LeaseLost(RuntimeError):
    """The lease could not be renewed in time, or another process took it: stop, do not go on."""


@dataclass
class Lease:
    """A held lease: `lost` is set when renewing it failed for longer than the lease lasts, or
    another holder has it (a run that went on would then overlap the next one)."""

    name: str
    holder: str
    lost: threading.Event = field(default_factory=threading.Event)
    why: str = ""

    def check(self) -> None:
        if self.lost.is_set():
            raise LeaseLost(f"the {self.name} lease was lost ({self.why}): stopped so that two runs never overlap")


@contextmanager
def held(database: Engine, name: str, holder: str | None = None, lease: timedelta = LEASE) -> Iterator[Lease]:
    """Hold the lease for the block, renewing it every third of a lease; LockHeld if taken.
    The `Lease` says when renewing failed (`lost`), so the holder can stop."""
    holder = holder or this_process()
    with Session(database) as session:
        got = acquire(session, name, holder, lease)
        current = None if got else holder_of(session, name)
        if current is not None and _dead_here(current.holder):
            got = take_over(session, name, current.holder, holder, lease)
        if not got:
            raise LockHeld(f"{name} is held by {current.holder} until {_when(current.expires_at)}"
                           if current else f"{name} is held by another process")
        session.commit()
    stop, kept = threading.Event(), Lease(name, holder)
    heartbeat = threading.Thread(target=_renew_until, args=(database, kept, lease, stop),
                                 name=f"lease-{name}", daemon=True)
    heartbeat.start()
    try:
        yield kept
    finally:
        stop.set()
        heartbeat.join()
        with Session(database) as session:
            release(session, name, holder)
            session.commit()


def _renew_until(database: Engine, kept: Lease, lease: timedelta, stop: threading.Event) -> None:
    """Renew every third of a lease. A renewal that fails is tried again at the next beat, until
    the lease would have run out: then, or at once if another holder has it, it is lost."""
    renewed = time.monotonic()
    while not stop.wait(lease.total_seconds() / 3):
        try:
            with Session(database) as session:
                ours = renew(session, kept.name, kept.holder, lease)
                session.commit()
        except Exception as error:  # the store is away; the lease may still be ours for a while
            log.warning("renewing the %s lease failed: %s", kept.name, error)
            if time.monotonic() - renewed < lease.total_seconds():
                continue
            kept.why = f"not renewed for {lease.total_seconds():.0f} s: {error}"
        else:
            if ours:
                renewed = time.monotonic()
                continue
            kept.why = "another process holds it now"
        log.error("the %s lease is lost (%s)", kept.name, kept.why)
        kept.lost.set()
        return


def _when(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")
