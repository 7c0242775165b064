"""A/B choices: "A better", "B better", "Tie" or "Both bad" on a pair of answers.

A is the answer shown first. The choice is stored with where each answer was shown
(the last press counts), and the conversation goes on with the winner.
"""

from __future__ import annotations

import json
import uuid

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext
from slack_sdk.web.async_client import AsyncWebClient
from sqlmodel import Session

from bot.slack import blocks
from bot.slack.calls import call
from bot.slack.people import slack_id_of, slack_user
from bot.slack.services import SlackServices, told
from store import judgments
from store.models import Response, Winner

ACTION = "tl_compare_"
GONE = "Those answers are no longer in the store, so the choice was not kept."


def stored_winner(choice: str, a_position: int) -> Winner:
    """What the user chose among what they saw (A is shown first) as the stored winner."""
    if choice in ("tie", "both_bad"):
        return Winner(choice)
    first = "a" if a_position == 0 else "b"
    second = "b" if first == "a" else "a"
    return Winner(first if choice == "a_better" else second)


async def choose(ack: AsyncAck, body: dict, context: AsyncBoltContext, client: AsyncWebClient) -> None:
    await ack()
    services: SlackServices = context["tuneloop"]
    action = body["actions"][0]
    pair = json.loads(action["value"])
    winner = stored_winner(action["action_id"].removeprefix(ACTION), pair["a_position"])
    who, channel, message = body["user"]["id"], body["channel"]["id"], body["message"]

    def save(session: Session) -> dict | None:
        a, b = session.get(Response, uuid.UUID(pair["a"])), session.get(Response, uuid.UUID(pair["b"]))
        if a is None or b is None:
            return None
        user = slack_user(session, services.config, who)
        judgments.save_comparison(session, user=user, response_a=a, response_b=b, winner=winner,
                                  a_position=pair["a_position"])
        told(session, "comparison", [a.id, b.id], user.id, {"winner": winner.value})
        choices = {}
        for external, comparison in judgments.comparisons_for_pair(session, response_a_id=a.id, response_b_id=b.id):
            if slack_id_of(external):
                choices[slack_id_of(external)] = _as_shown(comparison.winner, comparison.a_position)
        return choices

    choices = await services.in_session(save)
    if choices is None:
        await call(client, "chat.postEphemeral", channel=channel, user=who, text=GONE)
        return
    await call(client, "chat.update", channel=channel, ts=message["ts"], text=message.get("text", "A/B"),
               blocks=blocks.with_choices(message.get("blocks", []), choices))


def _as_shown(winner: Winner, a_position: int) -> str:
    """A stored winner in the message's own terms (A is shown first)."""
    if winner in (Winner.tie, Winner.both_bad):
        return winner.value
    return "a" if (winner == Winner.a) == (a_position == 0) else "b"


def register(app: AsyncApp) -> None:
    for key in blocks.COMPARE:
        app.action(f"{ACTION}{key}")(choose)
