"""The feedback API over HTTP, on both databases: storing, retries, and refusing bad input."""

from __future__ import annotations

import threading
import uuid

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, func, select

from store.models import Comparison, Correction, Rating, Thumb


@pytest.fixture
def api(settings, database_url, tiny_engine):
    from tuneloop.app import create_app

    settings.database_url = database_url
    with TestClient(create_app(settings, engine=tiny_engine)) as client:
        yield client


def visitor(api: TestClient) -> dict[str, str]:
    token = api.post("/api/session").json()["token"]
    return {"Authorization": f"Bearer {token}"}


def answered_turn(api: TestClient, headers: dict, ab: bool = False) -> list[str]:
    """Chat through the widget API and return the response ids of one turn."""
    api.app.state.settings.ab_share = 1.0 if ab else 0.0
    conversation = api.post("/api/conversations", headers=headers).json()["id"]
    reply = api.post(f"/api/conversations/{conversation}/messages", json={"content": "hello"}, headers=headers)
    assert reply.status_code == 200
    turn = api.get(f"/api/conversations/{conversation}", headers=headers).json()["turns"][-1]
    return [answer["response_id"] for answer in sorted(turn["answers"], key=lambda a: a["index"])]


def count(api: TestClient, model) -> int:  # noqa: ANN001
    with Session(api.app.state.database) as session:
        return session.exec(select(func.count()).select_from(model)).one()


def test_rating_is_stored_and_replayed_once_per_idempotency_key(api):
    headers = visitor(api)
    (response_id,) = answered_turn(api, headers)
    body = {"response_id": response_id, "thumb": "down", "reason": "incorrect", "comment": "no"}
    keyed = {**headers, "Idempotency-Key": "rate-1"}

    first = api.post("/api/feedback/ratings", json=body, headers=keyed)
    again = api.post("/api/feedback/ratings", json=body, headers=keyed)

    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert count(api, Rating) == 1
    changed = api.post("/api/feedback/ratings", json={**body, "thumb": "up", "reason": None}, headers=keyed)
    assert changed.status_code == 422 and "different request" in changed.json()["detail"]


def test_a_later_vote_replaces_the_earlier_one(api):
    headers = visitor(api)
    (response_id,) = answered_turn(api, headers)
    api.post("/api/feedback/ratings", json={"response_id": response_id, "thumb": "down"}, headers=headers)
    latest = api.post("/api/feedback/ratings", json={"response_id": response_id, "thumb": "up"}, headers=headers)
    assert latest.json()["thumb"] == "up"
    with Session(api.app.state.database) as session:
        assert [r.thumb for r in session.exec(select(Rating))] == [Thumb.up]


@pytest.mark.parametrize(
    ("body", "fix"),
    [
        ({"thumb": "sideways"}, "thumb"),
        ({"stars": 9}, "stars"),
        ({"thumb": "up", "reason": "incorrect"}, "reason goes with thumb 'down'"),
        ({"thumb": "down", "reason": "meh"}, "reason"),
        ({}, "at least one of thumb, stars or comment"),
        ({"thumb": "up", "starz": 3}, "starz"),
    ],
)
def test_bad_ratings_get_422_saying_what_to_fix(api, body, fix):
    headers = visitor(api)
    (response_id,) = answered_turn(api, headers)
    reply = api.post("/api/feedback/ratings", json={"response_id": response_id, **body}, headers=headers)
    assert reply.status_code == 422
    assert fix in reply.json()["detail"]
    assert count(api, Rating) == 0


def test_malformed_json_and_bad_ids_get_422(api):
    headers = {**visitor(api), "Content-Type": "application/json"}
    assert api.post("/api/feedback/ratings", content=b"{not json", headers=headers).status_code == 422
    reply = api.post("/api/feedback/ratings", json={"response_id": "42", "thumb": "up"}, headers=headers)
    assert reply.status_code == 422 and "response_id" in reply.json()["detail"]


def test_unknown_and_other_peoples_responses_are_404(api):
    alice, mallory = visitor(api), visitor(api)
    (response_id,) = answered_turn(api, alice)
    unknown = api.post("/api/feedback/ratings", json={"response_id": str(uuid.uuid4()), "thumb": "up"}, headers=alice)
    theirs = api.post("/api/feedback/ratings", json={"response_id": response_id, "thumb": "down"}, headers=mallory)
    assert unknown.status_code == theirs.status_code == 404
    assert "No response with id" in unknown.json()["detail"]
    assert count(api, Rating) == 0


def test_missing_or_unknown_token_is_401(api):
    body = {"response_id": str(uuid.uuid4()), "thumb": "up"}
    assert api.post("/api/feedback/ratings", json=body).status_code == 401
    bad = api.post("/api/feedback/ratings", json=body, headers={"Authorization": "Bearer tl-nope"})
    assert bad.status_code == 401 and "Unknown" in bad.json()["detail"]


def test_oversized_body_gets_413_and_stores_nothing(api):
    headers = visitor(api)
    (response_id,) = answered_turn(api, headers)
    huge = {"response_id": response_id, "thumb": "down", "comment": "x" * 100_000}
    reply = api.post("/api/feedback/ratings", json=huge, headers=headers)
    assert reply.status_code == 413 and "larger than" in reply.json()["detail"]

    def chunks():  # no Content-Length: the limit still holds
        for _ in range(20):
            yield b"x" * 8192

    streamed = api.post("/api/feedback/ratings", content=chunks(), headers=headers)
    assert streamed.status_code == 413
    assert count(api, Rating) == 0


def test_comparison_is_stored_with_positions(api):
    headers = visitor(api)
    a, b = answered_turn(api, headers, ab=True)
    body = {"response_a_id": a, "response_b_id": b, "winner": "b", "a_position": 1}
    reply = api.post("/api/feedback/comparisons", json=body, headers={**headers, "Idempotency-Key": "ab-1"})
    assert reply.status_code == 201
    assert (reply.json()["a_position"], reply.json()["b_position"], reply.json()["winner"]) == (1, 0, "b")
    assert count(api, Comparison) == 1


def test_comparisons_must_pair_two_answers_to_one_prompt(api):
    headers = visitor(api)
    (one,) = answered_turn(api, headers)
    (other,) = answered_turn(api, headers)
    different = {"response_a_id": one, "response_b_id": other, "winner": "a"}
    same = {"response_a_id": one, "response_b_id": one, "winner": "a"}
    assert "same prompt" in api.post("/api/feedback/comparisons", json=different, headers=headers).json()["detail"]
    assert api.post("/api/feedback/comparisons", json=same, headers=headers).status_code == 422
    assert count(api, Comparison) == 0


def test_correction_is_stored(api):
    headers = visitor(api)
    (response_id,) = answered_turn(api, headers)
    body = {"response_id": response_id, "text": "The right answer.", "comment": "be precise"}
    reply = api.post("/api/feedback/corrections", json=body, headers=headers)
    assert reply.status_code == 201 and reply.json()["text"] == "The right answer."
    assert api.post("/api/feedback/corrections", json={**body, "text": ""}, headers=headers).status_code == 422
    assert count(api, Correction) == 1


@pytest.fixture
def server_on_each_database(settings, database_url, tiny_engine):
    from tests.conftest import LiveServer
    from tuneloop.app import create_app

    settings.database_url = database_url
    with LiveServer(create_app(settings, engine=tiny_engine)) as server:
        yield server


def test_concurrent_retries_with_one_key_store_once(server_on_each_database):
    live_server = server_on_each_database
    with httpx.Client(base_url=live_server.url) as http:
        headers = {"Authorization": f"Bearer {http.post('/api/session').json()['token']}"}
        conversation = http.post("/api/conversations", headers=headers).json()["id"]
        http.post(f"/api/conversations/{conversation}/messages", json={"content": "hi"}, headers=headers)
        turn = http.get(f"/api/conversations/{conversation}", headers=headers).json()["turns"][0]
    body = {"response_id": turn["answers"][0]["response_id"], "text": "better"}
    statuses: list[int] = []

    def post() -> None:
        with httpx.Client(base_url=live_server.url) as http:
            reply = http.post("/api/feedback/corrections", json=body, headers={**headers, "Idempotency-Key": "same"})
            statuses.append(reply.status_code)

    threads = [threading.Thread(target=post) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [201] * 8
    with Session(live_server.app.state.database) as session:
        assert session.exec(select(func.count()).select_from(Correction)).one() == 1


def test_more_requests_than_pooled_connections_all_succeed(settings, tiny_engine):
    # Two worker threads and a pool of 18: 60 requests at once must queue for threads,
    # not hold connections while they wait (which would exhaust the pool and fail them).
    from concurrent.futures import ThreadPoolExecutor

    from tests.conftest import LiveServer
    from tuneloop.app import create_app

    settings.worker_threads = 2
    with LiveServer(create_app(settings, engine=tiny_engine)) as server, httpx.Client(base_url=server.url) as http:
        headers = {"Authorization": f"Bearer {http.post('/api/session').json()['token']}"}
        conversation = http.post("/api/conversations", headers=headers).json()["id"]
        http.post(f"/api/conversations/{conversation}/messages", json={"content": "hi"}, headers=headers)
        response_id = http.get(f"/api/conversations/{conversation}", headers=headers).json()["turns"][0]["answers"][0]["response_id"]

        def rate(stars: int) -> int:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                body = {"response_id": response_id, "stars": stars % 5 + 1}
                return client.post("/api/feedback/ratings", json=body, headers=headers).status_code

        with ThreadPoolExecutor(60) as pool:
            statuses = list(pool.map(rate, range(60)))
    assert statuses == [201] * 60


def test_ready_says_yes_with_the_store_engine_and_release_up_and_says_which_part_is_not(api):
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "checks": {
        "store": "ok", "engine": "ok", "release": "ok"}}
    live = api.app.state.live
    active = live.active
    live.active = None  # as before the first reconcile loaded a release
    try:
        not_yet = api.get("/readyz")
    finally:
        live.active = active
    assert not_yet.status_code == 503 and not_yet.json()["checks"]["release"] == "no active release loaded yet"
    assert api.get("/healthz").json() == {"status": "ok"}  # alive all along


def test_sessions_and_chat_are_rate_limited_per_client_with_retry_after(settings, tiny_engine):
    import openai

    from tests.conftest import LiveServer
    from tuneloop.app import create_app

    tight = settings.model_copy(update={"rate_limit_sessions": "3/minute", "rate_limit_chat": "2/minute"})
    with LiveServer(create_app(tight, engine=tiny_engine)) as server:
        replies = [httpx.post(f"{server.url}/api/session") for _ in range(4)]
        assert [r.status_code for r in replies] == [201, 201, 201, 429]
        assert 1 <= int(replies[-1].headers["Retry-After"]) <= 60 and "3 per 1 minute" in replies[-1].json()["detail"]
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        ask = dict(model="tuneloop", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        client.chat.completions.create(**ask)
        client.chat.completions.create(**ask)
        with pytest.raises(openai.RateLimitError) as limited:
            client.chat.completions.create(**ask)
        assert limited.value.response.headers["Retry-After"]


def test_production_refuses_placeholder_secrets_and_an_anonymous_api_nobody_asked_for():
    from pydantic import ValidationError

    from tuneloop.settings import Settings

    demo = dict(_env_file=None, environment="production", database_url="postgresql://tuneloop:tuneloop@db/tuneloop")
    with pytest.raises(ValidationError) as refused:
        Settings(**demo)
    message = str(refused.value)
    assert "database password" in message and "TUNELOOP_ALLOW_ANONYMOUS_API" in message
    real = {**demo, "database_url": "postgresql://tuneloop:Wq8-long-random@db/tuneloop"}
    assert Settings(**real, allow_anonymous_api=True).allow_anonymous_api  # asked for by name
    assert not Settings(**real, allow_anonymous_api=False).allow_anonymous_api
    with pytest.raises(ValidationError, match="rate_limit_chat"):
        Settings(_env_file=None, rate_limit_chat="lots")
