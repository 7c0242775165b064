"""The OpenAI parameters people rely on, carried out (not ignored), through the official clients:
JSON by constrained decoding, log-probabilities, tool calls, and `n` up to the deployment's cap.

The tiny model is random, so whatever it says is noise: what these tests check is that the
noise has the shape that was asked for, which only the constraint can give it.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field
from sqlmodel import Session

from store.models import Response
from tests.guided_cases import UNBOUNDED_LISTS, unbounded_list


class Person(BaseModel):
    name: str = Field(max_length=12)
    age: int = Field(ge=0, le=120)
    mood: Literal["glad", "sad", "calm"]


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city now.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                     "unit": {"enum": ["C", "F"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}},
                                       "required": ["zone"], "additionalProperties": False}}}


@pytest.fixture
def client(live_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="unused", max_retries=0)


def ask(client: openai.OpenAI, text: str = "Tell me about someone.", **options):  # noqa: ANN003
    return client.chat.completions.create(model="tuneloop", messages=[{"role": "user", "content": text}],
                                          max_tokens=options.pop("max_tokens", 120), **options)


def test_structured_output_helper_parses_into_the_pydantic_model(client):
    for seed in range(3):  # sampled, so three different answers, each valid
        completion = client.chat.completions.parse(
            model="tuneloop", messages=[{"role": "user", "content": "A person, please."}],
            response_format=Person, temperature=1.0, seed=seed, max_tokens=120)
        person = completion.choices[0].message.parsed
        assert isinstance(person, Person), completion.choices[0].message.content


def test_json_object_mode_answers_a_json_object_and_streams_it(client, live_server):
    completion = ask(client, "Answer in JSON.", response_format={"type": "json_object"}, temperature=0,
                     max_tokens=400)
    if completion.choices[0].finish_reason == "stop":  # a random model may still be inside a string at the cap
        assert isinstance(json.loads(completion.choices[0].message.content), dict)
    else:
        assert completion.choices[0].message.content.startswith("{")
    schema = Person.model_json_schema()
    stream = ask(client, stream=True, temperature=0.9, seed=3, response_format={
        "type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}})
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), schema)
    with Session(live_server.app.state.database) as session:  # what was answered is what is stored
        assert session.get(Response, uuid.UUID(completion.choices[0].model_extra["response_id"])).text \
            == completion.choices[0].message.content


def test_langchain_with_structured_output(live_server):
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(base_url=f"{live_server.url}/v1", api_key="unused", model="tuneloop", max_retries=0,
                      max_tokens=120, temperature=0.8)
    for method in ("json_schema", "function_calling"):  # response_format, then a forced tool call
        person = chat.with_structured_output(Person, method=method).invoke("A person, please.")
        assert isinstance(person, Person)


def test_a_schema_that_is_not_one_is_refused_before_anything_is_stored(client, live_server):
    with pytest.raises(openai.BadRequestError) as refused:
        ask(client, response_format={"type": "json_schema",
                                     "json_schema": {"name": "x", "schema": {"type": "integr"}}})
    assert "not a valid JSON schema" in refused.value.message and refused.value.body["param"].startswith("response_format")
    with pytest.raises(openai.BadRequestError):
        ask(client, response_format={"type": "json_schema"})


def test_logprobs_describe_each_generated_token(client):
    completion = ask(client, logprobs=True, top_logprobs=3, temperature=0, max_tokens=6)
    choice = completion.choices[0]
    tokens = choice.logprobs.content
    assert len(tokens) == completion.usage.completion_tokens
    assert "".join(t.token for t in tokens) == choice.message.content
    for token in tokens:
        assert len(token.top_logprobs) == 3 and token.logprob <= 0
        # Greedy: each token is the likeliest, so it heads its own alternatives.
        assert token.top_logprobs[0].token == token.token
        assert math.isclose(token.top_logprobs[0].logprob, token.logprob, abs_tol=1e-4)
    assert ask(client, max_tokens=3).choices[0].logprobs is None  # not asked, not given
    streamed = ask(client, logprobs=True, stream=True, temperature=0, max_tokens=6)
    entries = [t for c in streamed if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in entries] == [t.token for t in tokens]


def test_top_logprobs_without_logprobs_is_refused(client):
    with pytest.raises(openai.BadRequestError) as refused:
        ask(client, top_logprobs=2)
    assert "logprobs" in refused.value.message


def test_a_named_tool_choice_always_calls_that_tool_with_valid_arguments(client):
    for seed in range(2):
        completion = ask(client, "Weather in Paris?", tools=[WEATHER, TIME], temperature=1.0, seed=seed,
                         tool_choice={"type": "function", "function": {"name": "get_weather"}})
        choice = completion.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        (call,) = choice.message.tool_calls
        assert call.function.name == "get_weather" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])


def test_required_tool_choice_calls_one_of_the_tools_and_streams_the_call(client):
    stream = ask(client, "What now?", tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False,
                 stream=True, temperature=1.0, seed=1)
    chunks = [c for c in stream if c.choices]
    calls = [call for c in chunks for call in c.choices[0].delta.tool_calls or []]
    assert len(calls) == 1 and calls[0].function.name in ("get_weather", "get_time")
    tool = WEATHER if calls[0].function.name == "get_weather" else TIME
    jsonschema.validate(json.loads(calls[0].function.arguments), tool["function"]["parameters"])
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_a_tool_loop_goes_on_with_the_result(client, live_server):
    """The caller sends back the assistant's call and the tool's result; the model sees both."""
    first = ask(client, "Weather in Oslo?", tools=[WEATHER],
                tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = first.choices[0].message.tool_calls[0]
    messages = [{"role": "user", "content": "Weather in Oslo?"},
                first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 4}'}]
    second = client.chat.completions.create(model="tuneloop", messages=messages, tools=[WEATHER], max_tokens=10)
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")
    with Session(live_server.app.state.database) as session:
        answer = session.get(Response, uuid.UUID(second.choices[0].model_extra["response_id"]))
        from store import conversations

        history = [m.content for m in conversations.conversation_messages(session, conversation_id=answer.conversation_id)]
    assert '<tool_response>\n{"temp": 4}\n</tool_response>' in history
    assert any(call.function.arguments in text and "<tool_call>" in text for text in history)


def test_tool_requests_that_cannot_be_carried_out_say_why(client):
    with pytest.raises(openai.BadRequestError) as unknown:
        ask(client, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}})
    assert "nope" in unknown.value.message
    with pytest.raises(openai.BadRequestError):
        ask(client, tool_choice="required")
    with pytest.raises(openai.BadRequestError) as orphan:
        client.chat.completions.create(model="tuneloop", messages=[{"role": "tool", "content": "4"}])
    assert "tool_call_id" in orphan.value.message


def test_n_is_capped_by_the_setting(client):
    assert len(ask(client, n=4, max_tokens=2).choices) == 4
    with pytest.raises(openai.BadRequestError) as refused:
        ask(client, n=5, max_tokens=2)
    assert refused.value.body["param"] == "n" and "TUNELOOP_MAX_CHOICES" in refused.value.message


def test_auto_tool_choice_reads_tagged_calls_and_leaves_plain_text_alone():
    from serving.answer_format import AnswerFormat, read_answer

    auto = AnswerFormat(tools=("get_weather",))
    text = 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    answer = read_answer(auto, text)
    assert answer.content == "Let me look." and answer.finish_reason("stop") == "tool_calls"
    assert json.loads(answer.tool_calls[0].function.arguments) == {"city": "Rome"}
    assert read_answer(auto, "It is sunny.").tool_calls is None
    # A call of a function it was not given, or one that does not parse, is text, not a call.
    for wrong in ('<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>', "<tool_call>{oops</tool_call>"):
        assert read_answer(auto, wrong).content == wrong


@pytest.mark.parametrize("items", UNBOUNDED_LISTS)
def test_a_guided_answer_near_its_token_cap_closes_rather_than_stopping_mid_json(client, items):
    """In its last tokens the closing tokens win, so the answer still parses and stops by itself."""
    schema = unbounded_list(items)
    for seed in range(3):
        completion = ask(client, max_tokens=48, temperature=1.0, seed=seed, response_format={
            "type": "json_schema", "json_schema": {"name": "list", "schema": schema}})
        choice = completion.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_a_call_goes_back_to_the_model_as_it_wrote_it():
    from serving.answer_format import model_messages
    from serving.protocol import ChatMessage

    arguments = '{"city": "Zürich", "unit":"C"}'  # non-ASCII, and spaced as the caller had it
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    (sent,) = model_messages([ChatMessage(role="assistant", tool_calls=[call])])
    assert sent == {"role": "assistant",
                    "content": f'<tool_call>\n{{"name": "get_weather", "arguments": {arguments}}}\n</tool_call>'}
