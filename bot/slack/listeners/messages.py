"""A direct message or an @mention: answered in its thread, which is the conversation."""

from __future__ import annotations

import re

from slack_bolt.async_app import AsyncApp, AsyncBoltContext
from slack_sdk.web.async_client import AsyncWebClient

from bot.slack.answering import answer_in_thread
from bot.slack.calls import call
from bot.slack.inbox import exactly_once

MENTION = re.compile(r"<@[A-Z0-9]+>")
HINT = "Ask me anything: write your question after the mention."


async def direct_message(event: dict, context: AsyncBoltContext, client: AsyncWebClient) -> None:
    if event.get("channel_type") != "im" or event.get("subtype") or event.get("bot_id"):
        return  # edits, joins and bots' messages (ours included) are not questions
    await _answer(event, context, client)


async def mention(event: dict, context: AsyncBoltContext, client: AsyncWebClient) -> None:
    await _answer(event, context, client)


async def _answer(event: dict, context: AsyncBoltContext, client: AsyncWebClient) -> None:
    text = MENTION.sub("", event.get("text", "")).strip()
    thread_ts = event.get("thread_ts") or event["ts"]
    if not text:
        await call(client, "chat.postMessage", channel=event["channel"], thread_ts=thread_ts, text=HINT)
        return
    await answer_in_thread(context["tuneloop"], client, team=context.team_id or "-", channel=event["channel"],
                           thread_ts=thread_ts, user=event["user"], text=text, context=context)


def register(app: AsyncApp) -> None:
    app.event("message")(exactly_once(direct_message))
    app.event("app_mention")(exactly_once(mention))
