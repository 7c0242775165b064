"""Thumbs on an answer: a press stores the vote (the last one counts) and redraws who voted
what; thumbs down also opens a modal asking why."""

from __future__ import annotations

import asyncio
import json
import uuid

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext
from slack_sdk.web.async_client import AsyncWebClient
from sqlmodel import Session

from bot.slack import blocks
from bot.slack.calls import call
from bot.slack.people import slack_id_of, slack_user
from bot.slack.services import SlackServices, told
from feedback.redaction import redact_or_withhold
from store import judgments
from store.models import Response, Thumb

GONE = "That answer is no longer in the store, so the vote was not kept."


async def thumb_up(ack: AsyncAck, body: dict, context: AsyncBoltContext, client: AsyncWebClient) -> None:
    await ack()
    await _vote(body, context, client, Thumb.up)


async def thumb_down(ack: AsyncAck, body: dict, context: AsyncBoltContext, client: AsyncWebClient) -> None:
    await ack()
    # The modal first: its trigger expires 3 s after the press.
    metadata = {"response_id": body["actions"][0]["value"]}
    await call(client, "views.open", trigger_id=body["trigger_id"], view=blocks.down_reason_modal(metadata))
    await _vote(body, context, client, Thumb.down)


async def down_reason(ack: AsyncAck, body: dict, view: dict, context: AsyncBoltContext) -> None:
    await ack()
    services: SlackServices = context["tuneloop"]
    values = view["state"]["values"]
    reason = (values["reason"]["value"].get("selected_option") or {}).get("value")
    comment = values["comment"]["value"].get("value")
    if comment:  # kept only as redacted; withheld, never raw, if the check cannot run
        comment = await asyncio.to_thread(redact_or_withhold, services.redact, comment)
    response_id = uuid.UUID(json.loads(view["private_metadata"])["response_id"])
    await services.in_session(lambda session: _save(session, services, body["user"]["id"], response_id,
                                                      thumb=Thumb.down, reason=reason, comment=comment))


async def _vote(body: dict, context: AsyncBoltContext, client: AsyncWebClient, thumb: Thumb) -> None:
    services: SlackServices = context["tuneloop"]
    who, response_id = body["user"]["id"], uuid.UUID(body["actions"][0]["value"])
    votes = await services.in_session(lambda session: _save(session, services, who, response_id, thumb=thumb))
    channel = body["channel"]["id"]
    if votes is None:
        await call(client, "chat.postEphemeral", channel=channel, user=who, text=GONE)
        return
    message = body["message"]
    await call(client, "chat.update", channel=channel, ts=message["ts"], text=message.get("text", "answer"),
               blocks=blocks.with_votes(message.get("blocks", []), votes))


def _save(session: Session, services: SlackServices, who: str, response_id: uuid.UUID, **fields) -> dict | None:
    """Store the rating; every Slack voter's current thumb on that answer, or None if it is gone."""
    response = session.get(Response, response_id)
    if response is None:
        return None
    user = slack_user(session, services.config, who)
    judgments.save_rating(session, user=user, response=response, **fields)
    told(session, "rating", [response_id], user.id, {k: getattr(v, "value", v) for k, v in fields.items() if v})
    ratings = judgments.ratings_for_response(session, response_id=response_id)
    return {slack_id_of(external): r.thumb.value for external, r in ratings if r.thumb and slack_id_of(external)}


def register(app: AsyncApp) -> None:
    app.action(blocks.THUMB_UP)(thumb_up)
    app.action(blocks.THUMB_DOWN)(thumb_down)
    app.view(blocks.DOWN_REASON_MODAL)(down_reason)
