"""The chat turn as every channel uses it."""

from __future__ import annotations

import uuid

from serving.service import _answered_history
from store.models import Message, MessageRole


def test_a_prompt_that_was_never_answered_is_not_sent_again():
    conversation = uuid.uuid4()

    def message(role: MessageRole, content: str) -> Message:
        return Message(conversation_id=conversation, role=role, content=content)

    history = _answered_history([
        message(MessageRole.user, "first"),
        message(MessageRole.assistant, "answer"),
        message(MessageRole.user, "lost: the client left"),
        message(MessageRole.user, "now"),
    ])
    assert [m["content"] for m in history] == ["first", "answer", "now"]


def scripted_chat(database, external_id: str, instruction: str | None = None):  # noqa: ANN001, ANN201
    """A chat service on a scripted engine, serving the base release (under `instruction`), and
    a web conversation of a new visitor's."""
    from serving.routing import LiveReleases, choice_of
    from serving.service import ChatService
    from store import conversations, releases, users
    from store.db import session_scope
    from store.models import Channel
    from tests.engines import ScriptedEngine

    with session_scope(database) as session:
        base = releases.ensure_base_release(session, base_model="scripted")
        base.instruction = instruction
        user = users.get_or_create_user(session, external_id=external_id, name="visitor")
        conversation = conversations.create_conversation(session, user=user, channel=Channel.web).id
        live = LiveReleases()
        live.set(choice_of(base), None, 0.0)
    engine = ScriptedEngine("An answer.")
    return ChatService(engine, database, live, system_prompt="Be brief."), engine, conversation


def test_an_ab_turn_puts_the_plain_answer_beside_a_contrast_and_stores_only_the_users_words(database):
    import asyncio

    from serving.engine import SamplingParams
    from serving.pairs import CONTRASTS
    from store import conversations
    from store.db import session_scope
    from store.models import Response

    chat, engine, conversation = scripted_chat(database, "web:contrast")

    async def turn():
        opened = await chat.open_turn(conversation, "How do I boil an egg?", ab=True)
        return await chat.answer(opened, SamplingParams(temperature=0.7, max_tokens=8))

    plain, contrast = asyncio.run(turn())
    asked = [request.messages[-1]["content"] for request in engine.requests]
    assert asked[0] == "How do I boil an egg?"  # exactly what a single turn gets
    name = contrast.trace["contrast"]
    assert asked[1] == f"How do I boil an egg?\n\n{CONTRASTS[name]}"
    assert [r.params.temperature for r in engine.requests] == [0.7, 1.0]
    assert contrast.params["temperature"] == 1.0 and "contrast" not in plain.trace
    assert plain.trace["pair_kind"] == contrast.trace["pair_kind"] == "contrast"
    with session_scope(database) as session:
        texts = [m.content for m in conversations.conversation_messages(session, conversation_id=conversation)]
        stored = session.get(Response, contrast.id)
    assert CONTRASTS[name] not in " ".join(texts) and stored.trace["contrast_instruction"] == CONTRASTS[name]


def test_the_samples_strategy_gives_two_plain_samples_and_an_unknown_one_is_refused(database):
    import pytest

    from serving.pairs import draw_contrast
    from serving.routing import LiveReleases
    from serving.service import ChatService
    from tests.engines import ScriptedEngine

    assert draw_contrast("samples") is None
    with pytest.raises(ValueError, match="contrast, samples"):
        ChatService(ScriptedEngine("x"), database, LiveReleases(), system_prompt="", ab_strategy="many")


def test_a_release_answers_under_its_instruction_where_only_the_model_reads_it(database):
    import asyncio

    from serving.engine import Guide, SamplingParams
    from serving.pairs import CONTRASTS
    from store import conversations
    from store.db import session_scope

    warm = "Use a warm, friendly, encouraging tone."
    chat, engine, conversation = scripted_chat(database, "web:instructed", instruction=warm)

    async def turn(ab: bool, params: SamplingParams):
        opened = await chat.open_turn(conversation, "How do I boil an egg?", ab=ab)
        return await chat.answer(opened, params)

    single = asyncio.run(turn(False, SamplingParams(max_tokens=8)))[0]
    assert engine.requests[0].messages[-1]["content"] == f"How do I boil an egg?\n\n{warm}"
    # A contrast is the release's answer under one more instruction: a choice between them is a
    # vote on that instruction alone.
    _, contrast = asyncio.run(turn(True, SamplingParams(max_tokens=8)))
    asked = [request.messages[-1]["content"] for request in engine.requests[1:]]
    name = contrast.trace["contrast"]
    assert asked == [f"How do I boil an egg?\n\n{warm}", f"How do I boil an egg?\n\n{CONTRASTS[name]}\n\n{warm}"]
    # A guided answer's form is the caller's: no style is added to a JSON request.
    asyncio.run(turn(False, SamplingParams(max_tokens=8, guide=Guide())))
    assert engine.requests[-1].messages[-1]["content"] == "How do I boil an egg?"
    with session_scope(database) as session:
        texts = [m.content for m in conversations.conversation_messages(session, conversation_id=conversation)]
    assert single.text == "An answer." and not any(warm in text for text in texts)
