"""Group commit for ratings, the hottest write path.

Thumbs and stars arrive in bursts from every open chat. Stored one request at a time,
each rating cost a thread hop, two transactions and four statements, most of it Python
time in the driver and the ORM (about 8 ms of CPU per rating on this project's 2-core
reference machine, which capped the API near 130 ratings/s). Here each request queues
its rating and waits; one writer thread stores whatever queued while it was busy in a
single transaction of five statements, however many ratings that is: the batching the
serving engine does for tokens, and what databases call group commit.

A rating is acknowledged only once its batch has committed. When a batch fails, its
ratings are written again one by one, so a bad item (or a race with another process
over an Idempotency-Key) costs only itself.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from feedback.idempotency import Reply, key_in_use, replay, request_hash
from feedback.protocol import RatingIn, RatingOut
from store import conversations, idempotency, judgments, users
from store.errors import NotFound, StoreError, Unauthenticated, Unavailable

log = logging.getLogger(__name__)

Outcome = Reply | StoreError  # a refusal ends the request's future as its exception


@dataclass(frozen=True)
class RatingRequest:
    """One rating as the API received it: who (by token), what, and its retry key."""

    token: str
    body: RatingIn
    key: str | None = None
    token_hash: str = field(init=False)
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "token_hash", users.hash_token(self.token))
        object.__setattr__(self, "digest", request_hash("ratings", self.body))


class KeyTaken(Exception):
    """Another process claimed one of the batch's Idempotency-Keys after we looked."""


# Told of each rating stored (not replayed): (kind, response ids, user id, details).
FeedbackNotify = Callable[[str, list[str], int, dict], None]


def store_ratings(session: Session, requests: list[RatingRequest], written: list | None = None) -> list[Outcome]:
    """Store a batch of ratings in the session's transaction; one outcome per request.

    The batch must not hold two requests for one user and response, nor one key twice
    (`RatingWriter` holds such repeats back for a later batch). Raises KeyTaken when an
    Idempotency-Key was claimed concurrently: roll back and try again to replay it.
    """
    callers = users.users_by_token_hash(session, token_hashes={r.token_hash for r in requests})
    owners = conversations.response_owners(session, response_ids={r.body.response_id for r in requests})
    records = idempotency.idempotency_records(
        session, keys={(callers[r.token_hash].id, r.key) for r in requests if r.key and r.token_hash in callers}
    )
    outcomes: list[Outcome | None] = []
    writes: list[tuple[int, Any, RatingRequest]] = []
    for index, request in enumerate(requests):
        user = callers.get(request.token_hash)
        refusal = _refusal(request, user, owners)
        record = records.get((user.id, request.key)) if user and request.key else None
        if refusal is None and record is not None:
            refusal = _replayed(record, request.digest)
        outcomes.append(refusal)
        if refusal is None:
            writes.append((index, user, request))
    if writes:
        _write(session, writes, outcomes)
        if written is not None:
            written.extend((user.id, request) for _, user, request in writes)
    return outcomes  # type: ignore[return-value]


def _refusal(request: RatingRequest, user: Any, owners: dict[uuid.UUID, int]) -> Outcome | None:
    if user is None:
        return Unauthenticated("Unknown or revoked token")
    if not conversations.may_see(user, owners.get(request.body.response_id)):
        return NotFound(f"No response with id {request.body.response_id}")
    return None


def _replayed(record: Any, digest: str) -> Outcome:
    try:
        return replay(record, digest)
    except StoreError as refusal:
        return refusal


def _write(session: Session, writes: list[tuple[int, Any, RatingRequest]], outcomes: list) -> None:
    stored = judgments.save_ratings(
        session, ratings=[{"user_id": user.id, **request.body.model_dump(exclude={"response_id"}),
                           "response_id": request.body.response_id} for _, user, request in writes]
    )
    remembered = []
    for index, user, request in writes:
        row = stored[(request.body.response_id, user.id)]
        body = RatingOut.model_validate(row, from_attributes=True).model_dump(mode="json")
        outcomes[index] = Reply(201, body)
        if request.key:
            remembered.append({"user_id": user.id, "key": request.key, "request_hash": request.digest,
                               "status_code": 201, "body": body})
    claimed = idempotency.remember_idempotent_many(session, records=remembered)
    if len(claimed) != len(remembered):
        raise KeyTaken


class RatingWriter:
    """Threads that store queued ratings in batches; `rate` waits for the commit.

    SQLite takes one writer at a time, so one thread. PostgreSQL takes many: there a
    batch spends much of its time waiting on round trips, and a second thread writes
    meanwhile (measured: 1 thread ~450/s, 2 ~540/s, 4 ~465/s at 16 clients on 2 cores).
    """

    def __init__(
        self, database: Engine, max_batch: int = 256, threads: int | None = None, notify: FeedbackNotify | None = None
    ) -> None:
        self._database, self._max_batch, self._notify = database, max_batch, notify
        self._queue: queue.SimpleQueue[tuple[RatingRequest, Future] | None] = queue.SimpleQueue()
        threads = threads or (1 if database.dialect.name == "sqlite" else 2)
        self._threads = [
            threading.Thread(target=self._run, name=f"tuneloop-rating-writer-{n}", daemon=True) for n in range(threads)
        ]
        self.batch_sizes: deque[int] = deque(maxlen=4096)  # the latest batches: how well requests grouped

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        """Write everything queued so far, then stop."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()

    def submit(self, request: RatingRequest) -> Future[Reply]:
        """Queue a rating (from any thread); the future ends after the commit, with the reply or a refusal."""
        future: Future[Reply] = Future()
        self._queue.put((request, future))
        return future

    async def rate(self, request: RatingRequest) -> Reply:
        return await asyncio.wrap_future(self.submit(request))

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            batch = []
            while item is not None:
                batch.append(item)
                if len(batch) == self._max_batch:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            stopping = item is None
            if batch:
                self._write_batch(batch)

    def _write_batch(self, batch: list[tuple[RatingRequest, Future]]) -> None:
        first, repeats = _split_repeats(batch)
        self.batch_sizes.append(len(first))
        written: list = []
        try:
            with Session(self._database, expire_on_commit=False) as session:
                outcomes = store_ratings(session, [request for request, _ in first], written)
                session.commit()
        except Exception as error:  # each item gets its own try below
            if not isinstance(error, KeyTaken):
                log.warning("a batch of %d ratings failed (%s); writing them one by one", len(first), error)
            repeats = first + repeats
        else:
            self._told(written)
            for (_, future), outcome in zip(first, outcomes):
                _settle(future, outcome)
        for request, future in repeats:
            _settle(future, self._write_one(request))

    def _told(self, written: list) -> None:
        if self._notify is None:
            return
        for user_id, request in written:
            details = request.body.model_dump(mode="json", exclude={"response_id"}, exclude_none=True)
            self._notify("rating", [str(request.body.response_id)], user_id, details)

    def _write_one(self, request: RatingRequest) -> Outcome:
        for _ in range(2):  # a second pass replays a key another process took meanwhile
            try:
                written: list = []
                with Session(self._database, expire_on_commit=False) as session:
                    (outcome,) = store_ratings(session, [request], written)
                    session.commit()
                self._told(written)
                return outcome
            except KeyTaken:
                continue
            except Exception:  # answered, logged, and the writer goes on
                log.exception("could not store a rating for response %s", request.body.response_id)
                return Unavailable("The rating could not be stored; retry with the same Idempotency-Key")
        return key_in_use(request.key)


def _split_repeats(batch: list[tuple[RatingRequest, Future]]) -> tuple[list, list]:
    """Requests for a rating or a key already in the batch wait until it has committed:
    one statement cannot write one row twice, and a retry must see its original stored."""
    first, repeats, seen = [], [], set()
    for item in batch:
        request = item[0]
        marks = {("rating", request.token_hash, request.body.response_id)}
        if request.key:
            marks.add(("key", request.token_hash, request.key))
        (repeats if marks & seen else first).append(item)
        seen |= marks
    return first, repeats


def _settle(future: Future, outcome: Outcome) -> None:
    if future.set_running_or_notify_cancel():
        if isinstance(outcome, StoreError):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
