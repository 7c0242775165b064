"""Nothing personal is kept: every free text passes one redaction before the store, and it fails closed."""

from __future__ import annotations

import json

import openai
import pytest
from sqlalchemy import text
from sqlmodel import Session, select

from feedback.export import BUILDERS
from feedback.redaction import WITHHELD

# One of each kind the bundled store rules find (a Luhn-valid card, a mod-97 IBAN, a key).
SEEDED = {
    "email": "rosa.kim@mailbox.org",
    "phone": "+1 415 555 2671",
    "card": "4111 1111 1111 1111",
    "iban": "DE89 3704 0044 0532 0130 00",
    "key": "AKIAIOSFODNN7EXAMPLE",
}
PERSONAL = " ".join(f"my {kind} is {value}." for kind, value in SEEDED.items())


def found_in(texts: list[str]) -> list[str]:
    return [kind for kind, value in SEEDED.items() if any(value in t for t in texts)]


def every_stored_text(database) -> list[str]:  # noqa: ANN001
    queries = ["SELECT content FROM messages", "SELECT text FROM responses", "SELECT comment FROM ratings",
               "SELECT text FROM corrections", "SELECT comment FROM corrections",
               "SELECT CAST(body AS TEXT) FROM idempotency_keys"]
    with database.connect() as connection:
        return [str(row[0]) for query in queries for row in connection.execute(text(query)) if row[0] is not None]


def test_personal_data_in_every_field_reaches_neither_the_store_nor_an_export(live_server):
    url, database = live_server.url, live_server.app.state.database
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    # A whole history over the API: the system prompt, an earlier exchange and the question.
    history = [{"role": "system", "content": f"Be brief. {PERSONAL}"},
               {"role": "user", "content": f"Remember this: {PERSONAL}"},
               {"role": "assistant", "content": f"Noted: {PERSONAL}"},
               {"role": "user", "content": f"What did I say? {PERSONAL}"}]
    reply = client.chat.completions.create(model="tuneloop", messages=history, max_tokens=4)
    import httpx

    token = httpx.post(f"{url}/api/session").json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    conversation = httpx.post(f"{url}/api/conversations", headers=headers).json()["id"]
    httpx.post(f"{url}/api/conversations/{conversation}/messages", json={"content": PERSONAL}, headers=headers,
               timeout=60)
    turn = httpx.get(f"{url}/api/conversations/{conversation}", headers=headers).json()["turns"][-1]
    answer = turn["answers"][0]["response_id"]
    keyed = {**headers, "Idempotency-Key": "private-1"}
    rated = httpx.post(f"{url}/api/feedback/ratings", headers=keyed,
                       json={"response_id": answer, "thumb": "down", "comment": PERSONAL})
    corrected = httpx.post(f"{url}/api/feedback/corrections", headers={**headers, "Idempotency-Key": "private-2"},
                           json={"response_id": answer, "text": f"Say: {PERSONAL}", "comment": PERSONAL})
    assert rated.status_code == corrected.status_code == 201 and reply.id
    assert found_in([rated.text, corrected.text]) == []  # the answers say what was kept
    assert found_in(every_stored_text(database)) == []
    with Session(database) as session:
        exported = [json.dumps(row.data) for kind in ("dpo", "kto", "sft", "prompts") for row in BUILDERS[kind](session)]
    assert exported and found_in(exported) == []
    stored = " ".join(every_stored_text(database))
    assert "[email]" in stored and "[card]" in stored  # redacted, not dropped


@pytest.fixture
def broken_redaction(live_server):
    """The personal-data check fails from now on, as a crashed validator would."""
    plugins = live_server.app.state.plugins

    class Broken:
        name = "broken.store"

        def redact(self, text: str) -> str:
            raise RuntimeError("the validator crashed")

    plugins.redactors.append(Broken())
    yield
    plugins.redactors.pop()


def test_when_the_check_fails_feedback_is_refused_and_chat_stores_nothing_raw(live_server, broken_redaction):
    import httpx

    url, database = live_server.url, live_server.app.state.database
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(model="tuneloop", max_tokens=3,
                                           messages=[{"role": "user", "content": f"Fresh text {PERSONAL}"}])
    token = httpx.post(f"{url}/api/session").json()["token"]
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "broken-1"}
    refused = httpx.post(f"{url}/api/feedback/ratings", headers=headers,
                         json={"response_id": reply.id, "stars": 2, "comment": f"Fresh comment {PERSONAL}"})
    assert refused.status_code == 503 and "nothing was stored" in refused.json()["detail"]
    stored = every_stored_text(database)
    assert found_in(stored) == [] and WITHHELD in stored
    with database.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM ratings")).scalar() == 0


def answered(url: str, headers: dict, text_: str = "hello") -> list[str]:
    import httpx

    conversation = httpx.post(f"{url}/api/conversations", headers=headers).json()["id"]
    httpx.post(f"{url}/api/conversations/{conversation}/messages", json={"content": text_}, headers=headers,
               timeout=60)
    turn = httpx.get(f"{url}/api/conversations/{conversation}", headers=headers).json()["turns"][-1]
    return [a["response_id"] for a in sorted(turn["answers"], key=lambda a: a["index"])]


def test_a_vote_can_be_withdrawn_by_its_giver_only_and_its_retry_no_longer_replays(live_server):
    import httpx

    url = live_server.url
    owner = {"Authorization": f"Bearer {httpx.post(f'{url}/api/session').json()['token']}"}
    stranger = {"Authorization": f"Bearer {httpx.post(f'{url}/api/session').json()['token']}"}
    (answer,) = answered(url, owner)
    body = {"response_id": answer, "thumb": "up"}
    rating = httpx.post(f"{url}/api/feedback/ratings", json=body, headers={**owner, "Idempotency-Key": "w1"}).json()
    assert httpx.delete(f"{url}/api/feedback/ratings/{rating['id']}", headers=stranger).status_code == 404
    assert httpx.delete(f"{url}/api/feedback/ratings/{rating['id']}", headers=owner).status_code == 204
    assert httpx.delete(f"{url}/api/feedback/ratings/{rating['id']}", headers=owner).status_code == 404
    too_big = httpx.delete(f"{url}/api/feedback/corrections/{2**64}", headers=owner)  # the fuzz found a 500 here
    assert too_big.status_code == 422 and "item_id" in too_big.text
    with Session(live_server.app.state.database) as session:
        from feedback.export import kto_rows

        assert kto_rows(session) == []
    again = httpx.post(f"{url}/api/feedback/ratings", json=body, headers={**owner, "Idempotency-Key": "w1"})
    assert again.status_code == 201 and "Idempotent-Replayed" not in again.headers  # stored anew, not replayed
    with Session(live_server.app.state.database) as session:
        assert len(kto_rows(session)) == 1


def test_a_forgotten_person_leaves_the_store_and_the_audit_log_keeps_only_that_it_happened(live_server, tmp_path):
    import httpx
    from typer.testing import CliRunner

    from store.models import AuditLog, User
    from tuneloop.cli import app

    url, database = live_server.url, live_server.app.state.database
    session_body = httpx.post(f"{url}/api/session").json()
    person = {"Authorization": f"Bearer {session_body['token']}"}
    reviewer = {"Authorization": f"Bearer {httpx.post(f'{url}/api/session').json()['token']}"}
    (answer,) = answered(url, person, f"About me: {SEEDED['email']} and my dog Rex")
    httpx.post(f"{url}/api/feedback/corrections", headers=person, json={"response_id": answer, "text": "Woof, Rex."})
    (theirs,) = answered(url, reviewer, "Someone else's question")
    settings = live_server.app.state.settings
    env = {"TUNELOOP_DATABASE_URL": settings.database_url, "TUNELOOP_DATA_DIR": str(settings.data_dir)}
    import tuneloop.settings as tuneloop_settings

    tuneloop_settings.get_settings.cache_clear()
    result = CliRunner().invoke(app, ["users", "forget", str(session_body["user_id"]), "--yes"], env=env)
    tuneloop_settings.get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "1 conversations" in result.output and "1 feedback on their answers" in result.output
    stored = " ".join(every_stored_text(database))
    assert "Rex" not in stored and "Someone else's question" in stored
    with Session(database) as session:
        forgotten = session.get(User, session_body["user_id"])
        entry = session.exec(select(AuditLog).where(AuditLog.action == "user.forget")).one()
    assert forgotten.name == "forgotten" and forgotten.token_hash is None
    assert entry.target == f"user:{forgotten.id}" and "Rex" not in json.dumps(entry.details)
    assert httpx.get(f"{url}/api/conversations/{answer}", headers=person).status_code == 401  # the token is gone
    del theirs
