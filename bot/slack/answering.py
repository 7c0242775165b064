"""Answer a Slack message in its thread: post at once, edit as tokens come, add the buttons."""

from __future__ import annotations

import logging
import random
import time

from slack_bolt.async_app import AsyncBoltContext
from slack_sdk.web.async_client import AsyncWebClient

from bot.slack import blocks, inbox
from bot.slack.calls import call
from bot.slack.people import slack_user, thread_conversation
from bot.slack.services import SlackServices
from serving.engine import SamplingParams
from serving.service import AnswerDelta, AnswerDone, Turn

log = logging.getLogger(__name__)
# chat.update is rate limited (Tier 3: about 50 a minute per channel): edit at most once a second.
EDIT_EVERY_S = 1.0


async def answer_in_thread(
    services: SlackServices, client: AsyncWebClient, *, team: str, channel: str, thread_ts: str, user: str, text: str,
    context: AsyncBoltContext | None = None,
) -> None:
    config = services.config

    def open_conversation(session):  # noqa: ANN001, ANN202
        return thread_conversation(session, slack_user(session, config, user), team, channel, thread_ts)

    conversation_id = await services.in_session(open_conversation)
    turn = await services.chat.open_turn(conversation_id, text, ab=random.random() < config.ab_share, channel="slack")
    display = sorted(range(len(turn.response_ids)), key=lambda index: turn.positions[index])
    texts = [""] * len(display)
    ts = await _answer_message(client, context, channel, thread_ts, blocks.writing(texts))
    params = SamplingParams(temperature=config.temperature, max_tokens=config.max_tokens)
    last_edit = time.monotonic()
    try:
        async for event in services.chat.stream(turn, params):
            position = turn.positions[event.index]
            if isinstance(event, AnswerDelta):
                texts[position] += event.text
            elif isinstance(event, AnswerDone):
                texts[position] = event.response.text
            if ts and time.monotonic() - last_edit >= EDIT_EVERY_S:
                last_edit = time.monotonic()
                await call(client, "chat.update", channel=channel, ts=ts, text=texts[0][:200] or "…",
                           blocks=blocks.writing(texts))
    except Exception:  # the user sees that it failed; the details go to the log
        log.exception("a Slack turn failed in conversation %s", conversation_id)
        failed = "Sorry, the answer could not be generated. Please try again."
        if ts:
            await call(client, "chat.update", channel=channel, ts=ts, text=failed, blocks=[])
        return
    if ts:
        await call(client, "chat.update", channel=channel, ts=ts, text=texts[0][:200] or "answer",
                   blocks=finished(turn, texts))


async def _answer_message(client: AsyncWebClient, context: AsyncBoltContext | None, channel: str, thread_ts: str,
                          writing: list[dict]) -> str | None:
    """The message the answer goes into: the one an earlier attempt at this event already posted
    (its holder died mid-answer: bot/slack/inbox.py), else a new one. None if Slack refused:
    the answer is still made and stored."""
    ts = await inbox.earlier_post(context) if context else None
    if ts:
        await call(client, "chat.update", channel=channel, ts=ts, text="…", blocks=writing)
        return ts
    posted = await call(client, "chat.postMessage", channel=channel, thread_ts=thread_ts, text="…", blocks=writing)
    ts = posted.get("ts") if posted else None
    if context:
        await inbox.remember_post(context, ts)
    return ts


def finished(turn: Turn, texts: list[str]) -> list[dict]:
    if len(turn.response_ids) == 1:
        return blocks.answer(turn.response_ids[0], texts[0])
    a, b = turn.response_ids
    return blocks.comparison(texts, {"a": str(a), "b": str(b), "a_position": turn.positions[0]})
