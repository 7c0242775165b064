"""`/tuneloop review`: the next review task, sent to the reviewer's DM; corrections by modal."""

from __future__ import annotations

import random
import uuid

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext
from slack_sdk.web.async_client import AsyncWebClient
from sqlmodel import Session

from bot.slack import blocks
from bot.slack.calls import call
from bot.slack.people import slack_user
from bot.slack.services import SlackServices, told
from feedback import review
from feedback.redaction import RedactionUnavailable, redact_optional
from store import judgments
from store.models import STAFF, Response

HELP = "Usage: `/tuneloop review` sends you the next answer to rate or pair to compare."
REFUSED = "Only reviewers get review tasks. An operator can give you the role (`tuneloop users`)."
NOTHING = "Nothing to review right now. Thank you!"


async def command(ack: AsyncAck, command: dict, context: AsyncBoltContext, client: AsyncWebClient) -> None:
    if command.get("text", "").strip().lower() != "review":
        await ack(HELP)
        return
    services: SlackServices = context["tuneloop"]
    who = command["user_id"]

    def find(session: Session) -> list[dict] | str:
        reviewer = slack_user(session, services.config, who)
        if reviewer.role not in STAFF:
            return REFUSED
        task = review.next_task(session, reviewer)
        return NOTHING if task is None else task_blocks(task)

    found = await services.in_session(find)
    if isinstance(found, str):
        await ack(found)  # an ephemeral reply, seen by the sender only
        return
    await ack("Your next review task is in your direct messages.")
    await call(client, "chat.postMessage", channel=who, text="A review task", blocks=found)


def task_blocks(task: review.ReviewTask) -> list[dict]:
    if task.kind == "rate":
        (response,) = task.responses
        return blocks.rate_task(task.prompt.content, task.history, response.id, response.text)
    a, b = task.responses
    a_position = random.randint(0, 1)  # shown in a fresh random order, recorded with the choice
    shown = [a.text, b.text] if a_position == 0 else [b.text, a.text]
    return blocks.compare_task(task.prompt.content, task.history, shown,
                               {"a": str(a.id), "b": str(b.id), "a_position": a_position})


async def write_better(ack: AsyncAck, body: dict, context: AsyncBoltContext, client: AsyncWebClient) -> None:
    await ack()
    services: SlackServices = context["tuneloop"]
    response_id = uuid.UUID(body["actions"][0]["value"])
    response = await services.in_session(lambda session: session.get(Response, response_id))
    if response is not None:
        await call(client, "views.open", trigger_id=body["trigger_id"],
                   view=blocks.correction_modal(response.id, response.text))


async def save_correction(ack: AsyncAck, body: dict, view: dict, context: AsyncBoltContext) -> None:
    values = view["state"]["values"]
    text = (values["text"]["value"].get("value") or "").strip()
    if not text:
        await ack(response_action="errors", errors={"text": "Write the answer it should have given."})
        return
    services: SlackServices = context["tuneloop"]
    response_id = uuid.UUID(view["private_metadata"])

    def save(session: Session) -> str | None:
        reviewer = slack_user(session, services.config, body["user"]["id"])
        response = session.get(Response, response_id)
        if reviewer.role not in STAFF:
            return "Only reviewers can write corrections."
        if response is None:
            return "That answer is no longer in the store."
        try:
            judgments.add_correction(session, user=reviewer, response=response, text=services.redact(text),
                                     comment=redact_optional(services.redact, values["comment"]["value"].get("value")))
        except RedactionUnavailable:
            return "The personal-data check could not run, so nothing was stored; please submit again."
        told(session, "correction", [response.id], reviewer.id)
        return None

    problem = await services.in_session(save)
    if problem:
        await ack(response_action="errors", errors={"text": problem})
    else:
        await ack()


def register(app: AsyncApp) -> None:
    app.command("/tuneloop")(command)
    app.action(blocks.CORRECT)(write_better)
    app.view(blocks.CORRECTION_MODAL)(save_correction)
