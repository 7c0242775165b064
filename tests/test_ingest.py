"""Group commit of ratings, on both databases: batches, repeats in a batch, failures, shutdown."""

from __future__ import annotations

import uuid
from concurrent.futures import Future

import pytest
from sqlmodel import Session, func, select

from feedback.idempotency import Reply as JSONResponse  # the writer answers plain values
from feedback.ingest import RatingRequest, RatingWriter
from feedback.protocol import RatingIn
from store import users
from store.db import session_scope
from store.errors import StoreError as HTTPException  # and refuses with domain errors, not HTTP
from store.models import Rating, Role
from tests.test_store import make_turn


@pytest.fixture
def rater(database) -> tuple[str, list[uuid.UUID]]:
    """A token and ten answers in the token holder's own conversations."""
    with session_scope(database) as session:
        user = users.get_or_create_user(session, external_id="web:rater", name="rater")
        token = users.issue_token(session, user=user)
        ids = [r.id for _ in range(5) for r in make_turn(session, user)[2]]
    return token, ids


def queued(database, requests: list[RatingRequest]) -> tuple[RatingWriter, list]:
    """A writer with the requests queued before it starts, so they meet in one batch."""
    writer = RatingWriter(database, threads=1)
    futures = [writer.submit(request) for request in requests]
    writer.start()
    return writer, futures


def outcome(future: Future) -> JSONResponse | HTTPException:
    error = future.exception(timeout=30)
    return error if error is not None else future.result()


def stored(database) -> list[Rating]:
    with Session(database) as session:
        return list(session.exec(select(Rating).order_by(Rating.id)).all())


def test_ratings_queued_together_are_written_in_one_batch(database, rater):
    token, ids = rater
    writer, futures = queued(database, [RatingRequest(token, RatingIn(response_id=i, stars=3)) for i in ids])
    statuses = [outcome(f).status_code for f in futures]
    writer.close()

    assert statuses == [201] * len(ids)
    assert list(writer.batch_sizes) == [len(ids)]
    assert sorted(r.response_id for r in stored(database)) == sorted(ids)


def test_repeats_in_one_batch_apply_in_order_and_a_repeated_key_replays(database, rater):
    token, (first, second, *_) = rater
    votes = [
        RatingRequest(token, RatingIn(response_id=first, thumb="down", reason="incorrect", comment="no")),
        RatingRequest(token, RatingIn(response_id=first, stars=2)),
        RatingRequest(token, RatingIn(response_id=first, thumb="up")),
        RatingRequest(token, RatingIn(response_id=second, thumb="up"), key="k"),
        RatingRequest(token, RatingIn(response_id=second, thumb="up"), key="k"),
        RatingRequest(token, RatingIn(response_id=second, thumb="down"), key="k"),
    ]
    writer, futures = queued(database, votes)
    answers = [outcome(f) for f in futures]
    writer.close()

    (rating, other) = sorted(stored(database), key=lambda r: r.response_id != first)
    assert (rating.thumb, rating.reason, rating.stars, rating.comment) == ("up", None, 2, "no")
    assert other.thumb == "up"
    assert answers[4].headers["Idempotent-Replayed"] == "true" and answers[4].body == answers[3].body
    assert isinstance(answers[5], HTTPException) and answers[5].status_code == 422


def test_unknown_tokens_and_other_peoples_answers_are_refused_in_a_batch(database, rater):
    token, ids = rater
    with session_scope(database) as session:
        stranger = users.issue_token(
            session, user=users.get_or_create_user(session, external_id="web:stranger", name="stranger"))
        reviewer = users.get_or_create_user(session, external_id="slack:rita", name="rita", role=Role.reviewer)
        staff = users.issue_token(session, user=reviewer)
    writer, futures = queued(database, [
        RatingRequest("tl-nobody", RatingIn(response_id=ids[0], thumb="up")),
        RatingRequest(stranger, RatingIn(response_id=ids[0], thumb="up")),
        RatingRequest(token, RatingIn(response_id=uuid.uuid4(), thumb="up")),
        RatingRequest(staff, RatingIn(response_id=ids[0], thumb="down")),
    ])
    answers = [outcome(f) for f in futures]
    writer.close()

    assert [getattr(a, "status_code", None) for a in answers] == [401, 404, 404, 201]
    assert len(stored(database)) == 1


def test_a_failing_rating_costs_only_itself(database, rater):
    token, ids = rater
    # Past the API's validation, the database's own check refuses six stars.
    bad = RatingIn.model_construct(response_id=ids[1], thumb=None, reason=None, comment=None, stars=6)
    writer, futures = queued(database, [
        RatingRequest(token, RatingIn(response_id=ids[0], stars=5)),
        RatingRequest(token, bad),
        RatingRequest(token, RatingIn(response_id=ids[2], stars=4)),
    ])
    answers = [outcome(f) for f in futures]
    writer.close()

    assert [a.status_code for a in answers] == [201, 503, 201]
    assert "retry" in answers[1].detail
    assert sorted(r.stars for r in stored(database)) == [4, 5]


def test_close_writes_everything_already_queued(database, rater):
    token, ids = rater
    writer = RatingWriter(database)
    writer.start()
    futures = [writer.submit(RatingRequest(token, RatingIn(response_id=i, thumb="up"))) for i in ids]
    writer.close()

    assert all(f.done() and f.result().status_code == 201 for f in futures)
    with Session(database) as session:
        assert session.exec(select(func.count()).select_from(Rating)).one() == len(ids)

