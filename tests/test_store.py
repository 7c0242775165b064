"""The feedback store on both databases: schema, constraints, last-write-wins, exports."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from feedback.export import export, kto_rows, preference_rows, sft_rows
from store import conversations, judgments, releases, users
from store.db import session_scope
from store.migrate import current_revision
from store.models import (
    Channel,
    Comparison,
    Message,
    MessageRole,
    Rating,
    Release,
    ReleaseState,
    Response,
    Role,
    Thumb,
    User,
    Winner,
)


def make_turn(session: Session, user: User, prompt: str = "What is WAL?", answers=("first", "second")):
    conversation = conversations.create_conversation(session, user=user, channel=Channel.web)
    message = conversations.add_message(session, conversation_id=conversation.id, role=MessageRole.user, content=prompt)
    release = releases.ensure_base_release(session, base_model="tiny")
    responses = [
        conversations.add_response(session, response=Response(conversation_id=conversation.id,
                                                              prompt_message_id=message.id, release_id=release.id, text=text))
        for text in answers
    ]
    conversations.continue_with(session, prompt_message_id=message.id, response=responses[0])
    return conversation, message, responses


@pytest.fixture
def user(database) -> User:
    with session_scope(database) as session:
        return users.get_or_create_user(session, external_id="web:alice", name="alice")


def test_schema_is_at_head_with_every_table(database):
    assert current_revision(database) == "0008"
    tables = set(inspect(database).get_table_names())
    assert {"users", "conversations", "messages", "responses", "ratings", "comparisons", "corrections",
            "releases", "training_runs", "audit_log", "idempotency_keys", "slack_deliveries", "job_locks", "answer_failures"} <= tables
    assert "instruction" in {column["name"] for column in inspect(database).get_columns("releases")}


def test_sqlite_runs_in_wal_with_foreign_keys(database):
    if database.dialect.name != "sqlite":
        pytest.skip("SQLite pragmas")
    with database.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_foreign_keys_are_enforced(database, user):
    with pytest.raises(IntegrityError), session_scope(database) as session:
        conversation = conversations.create_conversation(session, user=user, channel=Channel.api)
        session.add(Response(conversation_id=conversation.id, prompt_message_id=999_999, text="orphan"))
        session.flush()


def test_rating_is_one_per_user_and_response_last_write_wins(database, user):
    with session_scope(database) as session:
        _, _, (response, _) = make_turn(session, user)
        judgments.save_rating(session, user=user, response=response, thumb=Thumb.down, reason="incorrect",
                              comment="wrong year")
        judgments.save_rating(session, user=user, response=response, stars=4)
        judgments.save_rating(session, user=user, response=response, thumb=Thumb.up)
    with Session(database) as session:
        ratings = session.exec(select(Rating)).all()
    assert len(ratings) == 1
    rating = ratings[0]
    assert (rating.thumb, rating.reason, rating.stars) == (Thumb.up, None, 4)
    assert rating.comment == "wrong year"  # a comment stays until another replaces it
    assert rating.updated_at >= rating.created_at


def test_stars_outside_one_to_five_are_refused_by_the_database(database, user):
    with pytest.raises(IntegrityError), session_scope(database) as session:
        _, _, (response, _) = make_turn(session, user)
        session.add(Rating(response_id=response.id, user_id=user.id, stars=6))
        session.flush()


def test_comparison_keeps_positions_and_the_conversation_follows_the_winner(database, user):
    with session_scope(database) as session:
        conversation, message, (a, b) = make_turn(session, user)
        judgments.save_comparison(session, user=user, response_a=a, response_b=b, winner=Winner.b, a_position=1)
    with Session(database) as session:
        comparison = session.exec(select(Comparison)).one()
        assert (comparison.winner, comparison.a_position, comparison.b_position) == (Winner.b, 1, 0)
        assistant = session.exec(select(Message).where(Message.role == MessageRole.assistant)).one()
        assert (assistant.response_id, assistant.content) == (b.id, "second")
    with session_scope(database) as session:  # the user changes their mind: still one row
        judgments.save_comparison(session, user=user, response_a=a, response_b=b, winner=Winner.a, a_position=1)
    with Session(database) as session:
        assert session.exec(select(Comparison)).one().winner == Winner.a
        assistant = session.exec(select(Message).where(Message.role == MessageRole.assistant)).one()
        assert assistant.response_id == a.id


def test_tie_goes_on_with_the_answer_shown_first(database, user):
    with session_scope(database) as session:
        _, _, (a, b) = make_turn(session, user)
        judgments.save_comparison(session, user=user, response_a=a, response_b=b, winner=Winner.tie, a_position=1)
    with Session(database) as session:
        assistant = session.exec(select(Message).where(Message.role == MessageRole.assistant)).one()
        assert assistant.response_id == b.id  # b sat at position 0


def test_tokens_are_stored_hashed(database):
    with session_scope(database) as session:
        operator = users.get_or_create_user(session, external_id="cli:olga", name="olga", role=Role.operator)
        token = users.issue_token(session, user=operator)
    with Session(database) as session:
        stored = session.exec(select(User).where(User.external_id == "cli:olga")).one()
        assert stored.token_hash and token not in stored.token_hash
        assert users.user_by_token(session, token=token).id == stored.id
        assert users.user_by_token(session, token=token + "x") is None


def test_base_release_is_created_once_and_audited(database):
    with session_scope(database) as session:
        first = releases.ensure_base_release(session, base_model="tiny")
        again = releases.ensure_base_release(session, base_model="tiny")
        assert first.id == again.id and first.state == ReleaseState.active
    with Session(database) as session:
        assert len(session.exec(select(Release)).all()) == 1
        rows = session.exec(text("SELECT action, actor FROM audit_log")).all()
        assert [tuple(r) for r in rows] == [("release.create", "system")]


def test_exports_in_trl_formats(database, user, tmp_path):
    with session_scope(database) as session:
        bob = users.get_or_create_user(session, external_id="web:bob", name="bob")
        _, _, (a, b) = make_turn(session, user, "Name a prime", ("seven", "eight"))
        judgments.save_comparison(session, user=user, response_a=a, response_b=b, winner=Winner.a, a_position=0)
        _, _, (c, d) = make_turn(session, user, "Say hi", ("hello!", "go away"))
        judgments.save_rating(session, user=user, response=c, thumb=Thumb.up)
        judgments.save_rating(session, user=bob, response=d, thumb=Thumb.down, reason="unhelpful")
        judgments.add_correction(session, user=bob, response=d, text="Hi there, how can I help?", comment=None)

    with Session(database) as session:
        pairs = {(r.source, r.data["chosen"][0]["content"], r.data["rejected"][0]["content"])
                 for r in preference_rows(session)}
        assert pairs == {("comparison", "seven", "eight"), ("ratings", "hello!", "go away"),
                         ("correction", "Hi there, how can I help?", "go away")}
        kto = sorted((r.data["completion"][0]["content"], r.data["label"]) for r in kto_rows(session))
        assert kto == [("go away", False), ("hello!", True)]
        sft = sft_rows(session)[0].data["messages"]
        assert sft == [{"role": "user", "content": "Say hi"},
                       {"role": "assistant", "content": "Hi there, how can I help?"}]

        out = tmp_path / "dpo.jsonl"
        assert export(session, "dpo", out) == 3
        first = json.loads(out.read_text().splitlines()[0])
        assert set(first) == {"prompt", "chosen", "rejected"}
        assert first["prompt"][-1] == {"role": "user", "content": "Name a prime"}


def test_stars_and_both_bad_verdicts_become_labelled_answers(database, user):
    with session_scope(database) as session:
        _, _, (liked, disliked, middling) = make_turn(session, user, "Name a colour", ("blue", "uh", "red-ish"))
        judgments.save_rating(session, user=user, response=liked, stars=5)
        judgments.save_rating(session, user=user, response=disliked, stars=1)
        judgments.save_rating(session, user=user, response=middling, stars=3)  # says nothing either way
        _, _, (a, b) = make_turn(session, user, "Name a fruit", ("rock", "chair"))
        judgments.save_comparison(session, user=user, response_a=a, response_b=b, winner=Winner.both_bad, a_position=1)
    with Session(database) as session:
        rows = sorted((r.source, r.data["completion"][0]["content"], r.data["label"]) for r in kto_rows(session))
        pairs = preference_rows(session)
    assert rows == [("both_bad", "chair", False), ("both_bad", "rock", False), ("stars", "blue", True),
                    ("stars", "uh", False)]
    assert {(p.data["chosen"][0]["content"], p.data["rejected"][0]["content"]) for p in pairs} == {("blue", "uh"),
                                                                                                  ("red-ish", "uh"),
                                                                                                  ("blue", "red-ish")}


def test_processes_starting_together_upgrade_one_after_another(database_url):
    # Four engines (as four workers or replicas would have) upgrade the same fresh database at once.
    from concurrent.futures import ThreadPoolExecutor

    from store.db import make_engine
    from store.migrate import upgrade

    engines = [make_engine(database_url) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(upgrade, engines))
    assert {current_revision(engine) for engine in engines} == {"0008"}
