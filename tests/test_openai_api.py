"""The OpenAI-compatible API, driven by the official `openai` client against a live server."""

from __future__ import annotations

import uuid

import httpx
import openai
import pytest
from sqlmodel import Session, select

from store.models import Channel, Conversation, Message, Response, User


@pytest.fixture
def anonymous(live_server) -> openai.OpenAI:
    # As the README says: the official client with a placeholder key, which it always sends.
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="unused", max_retries=0)


def stored(live_server, response_id: str) -> Response:
    with Session(live_server.app.state.database) as session:
        return session.get(Response, uuid.UUID(response_id))


def test_models_are_listed(anonymous):
    assert "tuneloop" in [model.id for model in anonymous.models.list()]


def test_completion_carries_its_response_id_in_body_and_header(anonymous, live_server):
    raw = anonymous.chat.completions.with_raw_response.create(
        model="tuneloop",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}],
        max_tokens=5,
        temperature=0,
    )
    completion = raw.parse()
    response_id = completion.choices[0].model_extra["response_id"]
    assert raw.headers["X-Tuneloop-Response-Id"] == response_id == completion.id
    assert completion.usage.completion_tokens <= 5
    row = stored(live_server, response_id)
    assert row.text == completion.choices[0].message.content
    assert row.release_id is not None and row.completion_tokens == completion.usage.completion_tokens
    with Session(live_server.app.state.database) as session:
        conversation = session.get(Conversation, row.conversation_id)
        roles = [m.role.value for m in session.exec(select(Message).where(Message.conversation_id == conversation.id))]
    assert conversation.channel == Channel.api
    assert roles == ["system", "user", "assistant"]


def test_streaming_yields_the_same_text_that_is_stored(anonymous, live_server):
    stream = anonymous.chat.completions.create(
        model="tuneloop", messages=[{"role": "user", "content": "Count"}], stream=True, max_tokens=8,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish in (["length"], ["stop"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 8
    assert stored(live_server, chunks[0].id).text == text


def test_two_choices_and_stop_sequences(anonymous, live_server):
    probe = anonymous.chat.completions.create(
        model="tuneloop", messages=[{"role": "user", "content": "Go"}], temperature=0, max_tokens=10
    ).choices[0].message.content
    stop = probe[3:5]  # a piece of the greedy answer, so generation must stop on it
    assert len(stop) == 2
    completion = anonymous.chat.completions.create(
        model="tuneloop", messages=[{"role": "user", "content": "Go"}], temperature=0, max_tokens=10, n=2, stop=[stop],
    )
    assert len(completion.choices) == 2
    ids = {choice.model_extra["response_id"] for choice in completion.choices}
    assert len(ids) == 2
    for choice in completion.choices:
        assert stop not in choice.message.content
        assert choice.finish_reason == "stop"
        assert probe.startswith(choice.message.content)
    rows = [stored(live_server, response_id) for response_id in ids]
    assert rows[0].prompt_message_id == rows[1].prompt_message_id


def test_errors_come_in_openai_shape(anonymous, live_server):
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError) as missing:
        anonymous.chat.completions.create(model="gpt-9", messages=messages)
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        anonymous.chat.completions.create(model="tuneloop", messages=messages, temperature=5)
    assert bad.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError):
        anonymous.chat.completions.create(model="tuneloop", messages=messages, n=17)
    with pytest.raises(openai.BadRequestError) as last:
        anonymous.chat.completions.create(model="tuneloop", messages=[{"role": "assistant", "content": "x"}])
    assert "last message" in last.value.message
    revoked = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="tl-no-such-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError):  # a tuneloop token that matches nobody is refused
        revoked.chat.completions.create(model="tuneloop", messages=messages)


@pytest.mark.parametrize("key", ["unused", "EMPTY", "sk-proj-0123456789abcdef"])
def test_a_client_placeholder_key_is_the_anonymous_user(live_server, key):
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=key, max_retries=0)
    reply = client.chat.completions.create(model="tuneloop", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    with Session(live_server.app.state.database) as session:
        owner = session.get(User, session.get(Conversation, stored(live_server, reply.id).conversation_id).user_id)
    assert owner.external_id == "api:anonymous"


def test_langchain_chat_openai_works_with_any_key(live_server):
    from langchain_openai import ChatOpenAI

    model = ChatOpenAI(base_url=f"{live_server.url}/v1", api_key="not-needed", model="tuneloop", max_tokens=4,
                       max_retries=0)
    reply = model.invoke("Hello there")
    assert isinstance(reply.content, str) and reply.response_metadata["model_name"] == "tuneloop"
    assert stored(live_server, reply.response_metadata["id"]).text == reply.content  # the stored answer
    streamed = "".join(chunk.content for chunk in model.stream("Hello again"))
    assert isinstance(streamed, str)


def test_curl_without_a_header_works(live_server):
    import json
    import subprocess

    body = json.dumps({"model": "tuneloop", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]})
    out = subprocess.run(["curl", "-sS", "-X", "POST", f"{live_server.url}/v1/chat/completions",
                          "-H", "Content-Type: application/json", "-d", body], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert json.loads(out)["object"] == "chat.completion"


def test_without_anonymous_access_a_placeholder_key_is_told_what_to_send(settings, tiny_engine):
    from tests.conftest import LiveServer
    from tuneloop.app import create_app

    closed = settings.model_copy(update={"allow_anonymous_api": False})
    with LiveServer(create_app(closed, engine=tiny_engine)) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as refused:
            client.models.list()
        assert "tuneloop token (tl-...)" in refused.value.message
        token = httpx.post(f"{server.url}/api/session").json()["token"]
        allowed = openai.OpenAI(base_url=f"{server.url}/v1", api_key=token, max_retries=0)
        assert "tuneloop" in [model.id for model in allowed.models.list()]


def test_a_user_token_is_accepted_and_names_the_conversation_owner(live_server):
    token = httpx.post(f"{live_server.url}/api/session").json()["token"]
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=token, max_retries=0)
    completion = client.chat.completions.create(model="tuneloop", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    # The conversation is the token holder's, so they (and only they) may rate the answer.
    rate = {"response_id": completion.id, "thumb": "up"}
    mine = httpx.post(f"{live_server.url}/api/feedback/ratings", json=rate, headers={"Authorization": f"Bearer {token}"})
    stranger = httpx.post(f"{live_server.url}/api/session").json()["token"]
    theirs = httpx.post(f"{live_server.url}/api/feedback/ratings", json=rate,
                        headers={"Authorization": f"Bearer {stranger}"})
    assert (mine.status_code, theirs.status_code) == (201, 404)


def test_concurrent_first_requests_share_one_anonymous_user(live_server):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: httpx.get(f"{live_server.url}/v1/models").status_code, range(8)))
    assert statuses == [200] * 8
    with Session(live_server.app.state.database) as session:
        assert len(session.exec(select(User).where(User.external_id == "api:anonymous")).all()) == 1


@pytest.mark.parametrize(("param", "value"), [
    ("functions", [{"name": "f", "parameters": {"type": "object"}}]),
    ("frequency_penalty", 0.5),
    ("logit_bias", {"1": 5}),
])
def test_a_parameter_that_is_not_honoured_is_refused_by_name(anonymous, param, value):
    with pytest.raises(openai.BadRequestError) as refused:
        anonymous.chat.completions.create(model="tuneloop", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=3, **{param: value})
    assert refused.value.body["param"] == param and param in refused.value.message


def test_an_unknown_parameter_is_named_and_harmless_defaults_pass(anonymous):
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as unknown:
        anonymous.chat.completions.create(model="tuneloop", messages=messages, extra_body={"temprature": 0.2})
    assert unknown.value.body["param"] == "temprature" and "Unrecognized" in unknown.value.message
    plain = anonymous.chat.completions.create(model="tuneloop", messages=messages, max_tokens=3, logprobs=False,
                                              response_format={"type": "text"}, presence_penalty=0,
                                              metadata={"team": "a"}, user="someone")
    assert plain.choices[0].message.role == "assistant"


def test_a_seed_makes_sampled_answers_reproducible_and_each_choice_its_own(anonymous):
    asked = {"model": "tuneloop", "messages": [{"role": "user", "content": "Tell me something."}],
             "max_tokens": 12, "temperature": 1.0}

    def texts(**extra) -> list[str]:  # noqa: ANN003
        return [c.message.content for c in anonymous.chat.completions.create(**asked, **extra).choices]

    first = texts(seed=7, n=2)
    assert texts(seed=7, n=2) == first  # the same seed, the same answers
    assert first[0] != first[1]  # choice i samples with seed + i: not one answer twice
    assert texts(seed=8)[0] == first[1]  # which is seed 8's own first answer
    assert texts(seed=9) != texts(seed=10)
