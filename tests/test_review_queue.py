"""The reviewers' queue in the order of a real reward model's doubt, scored live off the chat path.

A tiny reward model is trained once (on the marker preference of tests/test_reward.py) and
saved where the nightly run puts it: `reward/` beside the release's adapter.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from bot.slack.listeners.review import task_blocks
from feedback import review
from serving.review_scores import ReviewScorer
from store import conversations, judgments, users
from store.artifacts import directory_checksum, reward_dir_for
from store.db import make_engine, session_scope
from store.migrate import upgrade
from store.models import (
    Channel,
    MessageRole,
    Release,
    ReleaseState,
    Response,
    Role,
    Winner,
)
from tests.adapters import make_adapter
from tests.test_reward import MARKER, TOPICS, pair, tiny_config
from trainer.reward_model import RewardModel, train_reward_model
from tuneloop.app import create_app
from tuneloop.settings import Settings

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
# Single answers stored oldest first; their reward-model doubt is not in that order.
SINGLES = [("Tell me about tea.", f"{MARKER} tea {MARKER}"), ("Tell me about rain.", "plain rain answer"),
           ("Tell me about maps.", "maps"), ("Tell me about bikes.", f"{MARKER} bikes"),
           ("Tell me about bread.", f"bread {MARKER} {MARKER} {MARKER}"), ("Tell me about salt.", "salt, plainly")]


@pytest.fixture(scope="module")
def release_dir(tiny_model: Path, tmp_path_factory) -> Path:
    """A release folder as the nightly run leaves it: adapter/ and reward/ side by side."""
    folder = tmp_path_factory.mktemp("releases") / "r1"
    make_adapter(tiny_model, folder / "adapter")
    train = [pair(t, as_row=False) for t in TOPICS[:16]]
    train_reward_model(str(tiny_model), train, [], [], tiny_config(folder.parent), folder / "reward")
    return folder


@pytest.fixture(scope="module")
def reward_model(tiny_model: Path, release_dir: Path) -> RewardModel:
    return RewardModel.load(str(tiny_model), release_dir / "reward")


def load_reward(tiny_model: Path):
    return lambda release, folder: RewardModel.load(str(tiny_model), folder)


def add_release(database, name: str, base: Path, folder: Path | None, state: ReleaseState) -> int:
    adapter = folder / "adapter" if folder else None
    with session_scope(database) as session:
        release = Release(name=name, base_model=str(base), adapter_path=str(adapter) if adapter else None,
                          checksum=directory_checksum(adapter) if adapter else None, state=state)
        session.add(release)
        session.flush()
        return release.id


def single(session: Session, user, prompt: str, text: str, at: datetime) -> Response:
    conversation = conversations.create_conversation(session, user=user, channel=Channel.web)
    message = conversations.add_message(session, conversation_id=conversation.id, role=MessageRole.user, content=prompt)
    return conversations.add_response(session, response=Response(conversation_id=conversation.id,
                                                                 prompt_message_id=message.id, text=text, created_at=at))


def token(database, name: str, role: Role) -> dict[str, str]:
    with session_scope(database) as session:
        user = users.get_or_create_user(session, external_id=f"local:{name}", name=name, role=role)
        return {"Authorization": f"Bearer {users.issue_token(session, user=user)}"}


def app_settings(tmp_path: Path, tiny_model: Path, database_url: str, **overrides) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path / "var", model=str(tiny_model), device="cpu",
                    database_url=database_url, max_tokens=8, ab_share=0.0, plugins_disabled=["guardrails", "rag"],
                    **overrides)


def _nice(thread_id: int) -> int:
    stat = Path(f"/proc/self/task/{thread_id}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])  # field 19 of proc(5)


def test_the_reward_folder_is_beside_the_adapter(release_dir: Path):
    release = Release(name="r1", base_model="m", adapter_path=str(release_dir / "adapter"), state=ReleaseState.active)
    assert reward_dir_for(release) == release_dir / "reward"
    assert reward_dir_for(Release(name="base", base_model="m", state=ReleaseState.active)) is None


def test_the_queue_api_orders_answers_by_uncertainty_with_unscored_last(
        database_url, tmp_path, tiny_model, tiny_engine, release_dir, reward_model):
    database = make_engine(database_url)
    upgrade(database)
    r1 = add_release(database, "r1", tiny_model, release_dir, ReleaseState.active)
    with session_scope(database) as session:
        alice = users.get_or_create_user(session, external_id="web:alice", name="alice")
        scored = [single(session, alice, p, t, T0 + timedelta(minutes=i)) for i, (p, t) in enumerate(SINGLES)]
        # Stored after the scored ones, while nothing scored them (scoring off, or dropped).
        unscored = [single(session, alice, f"Later question {i}?", f"later answer {i}", T0 + timedelta(hours=1, minutes=i))
                    for i in range(2)]
        conversation = conversations.create_conversation(session, user=alice, channel=Channel.web)
        prompt = conversations.add_message(session, conversation_id=conversation.id, role=MessageRole.user,
                                           content="Tell me about clocks.")
        a_b = [conversations.add_response(session, response=Response(
                   conversation_id=conversation.id, prompt_message_id=prompt.id, text=text, trace={"index": i},
                   created_at=T0))
               for i, text in enumerate(("clocks", f"{MARKER} clocks"))]
    scorer = ReviewScorer(database, load_reward(tiny_model), batch_size=4, backfill=0, nice=None)
    scorer.submit([r.id for r in scored + a_b])
    while scorer.run_once():
        pass
    assert (scorer.stats().scored, scorer.stats().release) == (8, "r1")

    with Session(database) as session:
        stored = {r.id: r for r in session.exec(select(Response))}
    expected = reward_model.uncertainties([[{"role": "user", "content": p}] for p, _ in SINGLES], [t for _, t in SINGLES])
    assert [stored[r.id].review_uncertainty for r in scored] == pytest.approx(expected, abs=1e-4)
    assert all(stored[r.id].review_scorer_release_id == r1 for r in scored + a_b)
    assert all(stored[r.id].review_uncertainty is None for r in unscored)
    by_doubt = [r.id for r in sorted(scored, key=lambda r: -stored[r.id].review_uncertainty)]
    assert by_doubt != [r.id for r in reversed(scored)]  # the order tells doubt from recency

    settings = app_settings(tmp_path, tiny_model, database_url, review_scoring=False)
    rita, olga = token(database, "rita", Role.reviewer), token(database, "olga", Role.operator)
    bob = token(database, "bob", Role.user)
    with TestClient(create_app(settings, engine=tiny_engine)) as client:
        assert client.get("/api/review/queue").status_code == 401
        assert client.get("/api/review/next").status_code == 401
        assert client.get("/api/review/queue", headers=bob).status_code == 403
        assert client.get("/api/review/next", headers=bob).status_code == 403
        assert client.get("/api/review/queue", params={"limit": 0}, headers=rita).status_code == 422

        body = client.get("/api/review/queue", params={"limit": 50}, headers=rita).json()
        assert body["scorer"] is None  # live scoring is off in this app
        items = body["items"]
        assert items[0]["kind"] == "compare"
        assert [uuid.UUID(i) for i in items[0]["response_ids"]] == [r.id for r in a_b]
        assert items[0]["uncertainty"] == pytest.approx(max(stored[r.id].review_uncertainty for r in a_b))
        rates = items[1:]
        assert {i["kind"] for i in rates} == {"rate"}
        assert [uuid.UUID(i["response_ids"][0]) for i in rates] == by_doubt + [r.id for r in reversed(unscored)]
        assert [i["uncertainty"] for i in rates[:len(scored)]] == pytest.approx(sorted(expected, reverse=True), abs=1e-4)
        assert [i["scored_by"] for i in rates] == ["r1"] * len(scored) + [None] * len(unscored)
        assert [i["uncertainty"] for i in rates[len(scored):]] == [None] * len(unscored)
        prompt_of = {r.id: p for r, (p, _) in zip(scored, SINGLES, strict=True)}
        assert [i["prompt"] for i in rates[:len(scored)]] == [prompt_of[i] for i in by_doubt]
        assert client.get("/api/review/queue", params={"limit": 3}, headers=rita).json()["items"] == items[:3]
        assert client.get("/api/review/queue", params={"limit": 50}, headers=olga).json()["items"] == items

        # /next is the head of the queue, what Slack's /tuneloop review sends.
        first = client.get("/api/review/next", headers=rita).json()
        assert first["kind"] == "compare" and [uuid.UUID(a["id"]) for a in first["answers"]] == [r.id for r in a_b]
        with Session(database) as session:
            reviewer = users.get_or_create_user(session, external_id="local:rita", name="rita", role=Role.reviewer)
            judgments.save_comparison(session, user=reviewer, response_a=a_b[0], response_b=a_b[1], winner=Winner.b,
                                      a_position=0)
            session.commit()
            slack_task = review.next_task(session, reviewer)
        following = client.get("/api/review/next", headers=rita).json()
        assert following["kind"] == "rate" and uuid.UUID(following["answers"][0]["id"]) == by_doubt[0]
        assert following["answers"][0]["uncertainty"] == pytest.approx(max(expected))
        assert following["answers"][0]["scored_by"] == "r1"
        assert str(by_doubt[0]) in json.dumps(task_blocks(slack_task))
        # Rated, it leaves rita's queue (not olga's).
        rated = client.post("/api/feedback/ratings", json={"response_id": str(by_doubt[0]), "thumb": "up"}, headers=rita)
        assert rated.status_code == 201, rated.text
        assert uuid.UUID(client.get("/api/review/next", headers=rita).json()["answers"][0]["id"]) == by_doubt[1]
        assert client.get("/api/review/queue", params={"limit": 50}, headers=olga).json()["items"] == items
    database.dispose()


def test_the_service_scores_its_answers_with_the_active_release_reward_model(
        tmp_path, tiny_model, tiny_engine, release_dir, reward_model):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    database = make_engine(url)
    upgrade(database)
    r1 = add_release(database, "r1", tiny_model, release_dir, ReleaseState.active)
    plain = add_release(database, "plain", tiny_model, None, ReleaseState.retired)  # no adapter, no reward model
    rita = token(database, "rita", Role.reviewer)
    with TestClient(create_app(app_settings(tmp_path, tiny_model, url), engine=tiny_engine)) as client:
        scorer: ReviewScorer = client.app.state.review_scorer

        def ask(question: str) -> Response:
            reply = client.post("/v1/chat/completions", json={
                "model": "tuneloop", "messages": [{"role": "user", "content": question}], "max_tokens": 8})
            assert reply.status_code == 200, reply.text
            assert scorer.wait_idle(60)
            with Session(database) as session:
                return session.get(Response, uuid.UUID(reply.headers["X-Tuneloop-Response-Id"]))

        answer = ask("Tell me about ships.")
        if sys.platform == "linux":  # the scoring thread runs at low priority, the rest of the process does not
            assert _nice(scorer._thread.native_id) == 19
            assert _nice(threading.get_native_id()) == 0
        expected = reward_model.uncertainties([[{"role": "user", "content": "Tell me about ships."}]], [answer.text])
        assert answer.review_uncertainty == pytest.approx(expected[0], abs=1e-4)
        assert answer.review_scorer_release_id == r1
        stats = client.get("/api/review/queue", headers=rita).json()["scorer"]
        assert stats["release"] == "r1" and stats["scored"] >= 1 and stats["dropped"] == 0

        with session_scope(database) as session:  # an operator goes back to a release without a reward model
            session.get(Release, r1).state = ReleaseState.retired
            session.get(Release, plain).state = ReleaseState.active
        for _ in range(100):  # the scorer looks at the active release every couple of seconds
            if scorer.stats().release is None:
                break
            time.sleep(0.1)
        assert scorer.stats().release is None
        answer = ask("Tell me about birds.")
        assert answer.review_uncertainty is None and answer.review_scorer_release_id is None
        assert client.get("/api/review/queue", headers=rita).json()["scorer"]["release"] is None
    database.dispose()


def test_a_full_queue_drops_the_oldest_and_never_holds_up_the_writer(database, tiny_model, release_dir, reward_model):
    add_release(database, "r1", tiny_model, release_dir, ReleaseState.active)
    loading, go_on = threading.Event(), threading.Event()

    def slow_load(release, folder):
        loading.set()
        go_on.wait(60)
        return reward_model

    scorer = ReviewScorer(database, slow_load, queue_size=2, backfill=0, nice=None)
    stored: list[uuid.UUID] = []

    def store_answers() -> None:  # what the chat service does per answer: add a Response, commit
        with session_scope(database) as session:
            alice = users.get_or_create_user(session, external_id="web:alice", name="alice")
        for i in range(4):
            with session_scope(database) as session:
                stored.append(single(session, alice, f"Question {i}?", f"answer {i}", T0 + timedelta(minutes=i)).id)

    scorer.start()
    try:
        assert loading.wait(30)
        writer = threading.Thread(target=store_answers)
        writer.start()
        writer.join(20)
        assert not writer.is_alive() and len(stored) == 4  # stored while the scorer was stuck
        stats = scorer.stats()
        assert (stats.pending, stats.dropped, stats.scored) == (2, 2, 0)

        go_on.set()
        assert scorer.wait_idle(60)
        assert scorer.stats().scored == 2
        with Session(database) as session:
            values = [session.get(Response, i).review_uncertainty for i in stored]
        assert values[:2] == [None, None] and all(v is not None for v in values[2:])  # the oldest were dropped

        # A scorer that fails to take an answer never fails the commit that stored it.
        def broken(ids) -> None:
            raise RuntimeError("queue broken")

        scorer.submit = broken
        with session_scope(database) as session:
            alice = users.get_or_create_user(session, external_id="web:alice", name="alice")
            kept = single(session, alice, "Still stored?", "yes", T0).id
        with Session(database) as session:
            assert session.get(Response, kept) is not None
    finally:
        go_on.set()
        scorer.stop()
