"""Leases on named jobs, on both databases: one holder, expiry, take-over, release, renewal."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlmodel import Session

from store import locks


def test_one_holder_at_a_time_and_a_released_lease_is_free_again(database):
    with Session(database) as session:
        assert locks.acquire(session, "job", "a")
        assert not locks.acquire(session, "job", "b")
        assert locks.holder_of(session, "job").holder == "a"
        locks.release(session, "job", "b")  # not b's to release
        assert locks.holder_of(session, "job").holder == "a"
        locks.release(session, "job", "a")
        assert locks.acquire(session, "job", "b")
        session.commit()


def test_an_expired_lease_is_taken_over_and_a_renewed_one_is_not(database):
    with Session(database) as session:
        assert locks.acquire(session, "job", "a", lease=timedelta(seconds=-1))  # as if a died long ago
        assert locks.acquire(session, "job", "b")
        assert not locks.renew(session, "job", "a")  # a's lease is gone
        assert locks.renew(session, "job", "b", lease=timedelta(hours=1))
        assert not locks.acquire(session, "job", "c")
        session.commit()


def test_concurrent_takers_get_one_lease(database):
    results: list[bool] = []
    barrier = threading.Barrier(6)

    def take(holder: str) -> None:
        with Session(database) as session:
            barrier.wait()
            results.append(locks.acquire(session, "race", holder))
            session.commit()

    threads = [threading.Thread(target=take, args=(f"h{n}",)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 5 + [True]


def test_held_says_who_holds_the_job_and_frees_it_after(database):
    with locks.held(database, "job", "first"):
        with pytest.raises(locks.LockHeld, match="job is held by first until"):
            with locks.held(database, "job", "second"):
                pass
    with locks.held(database, "job", "second") as holder:
        assert holder.holder == "second"


def test_a_killed_holder_on_this_machine_need_not_be_waited_out(database):
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_holder = f"{socket.gethostname()}:{dead.stdout.strip()}"  # a process that has exited
    with Session(database) as session:
        assert locks.acquire(session, "job", dead_holder)
        session.commit()
    with locks.held(database, "job") as holder:  # its lease has minutes left, yet it is ours now
        assert holder.holder == locks.this_process()
    # A live holder, or one on another machine, is waited out as before.
    with Session(database) as session:
        assert locks.acquire(session, "job", "elsewhere:1")
        session.commit()
    with pytest.raises(locks.LockHeld, match="held by elsewhere:1"):
        with locks.held(database, "job"):
            pass


def test_a_nightly_run_does_not_start_while_another_holds_the_job(database, database_url, tmp_path):
    from trainer.config import NightlyConfig
    from trainer.nightly import JOB, Environment, main

    with locks.held(database, JOB, "another-machine:42"):
        result = main(NightlyConfig.from_flags(output_dir=str(tmp_path)), Environment(database_url, tmp_path, "unused"))
    assert result.status == "skipped" and "another-machine:42" in result.message


def test_a_lease_taken_by_another_process_is_lost_and_says_why(database):
    from datetime import timedelta

    short = timedelta(seconds=0.6)
    with locks.held(database, "job", "first", lease=short) as lease:
        with Session(database) as session:  # another process takes the job (its lease ran out, say)
            session.execute(text("UPDATE job_locks SET holder = 'thief' WHERE name = 'job'"))
            session.commit()
        assert lease.lost.wait(5)
        with pytest.raises(locks.LeaseLost, match="another process holds it now"):
            lease.check()
