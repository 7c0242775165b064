"""Approve, approve as canary or reject a candidate from its announcement (operators only).

The same `store.releases` functions as `tuneloop releases` and `/api/releases` run, so
the audit log names the Slack operator like any other.
"""

from __future__ import annotations

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext
from slack_sdk.web.async_client import AsyncWebClient
from sqlmodel import Session

from bot.slack import blocks
from bot.slack.calls import call
from bot.slack.people import slack_user
from bot.slack.services import SlackServices
from store import releases
from store.models import Role

APPROVE, CANARY, REJECT = blocks.RELEASE_ACTIONS
REFUSED = "Only operators can approve or reject releases."


async def decide(ack: AsyncAck, body: dict, context: AsyncBoltContext, client: AsyncWebClient) -> None:
    await ack()
    services: SlackServices = context["tuneloop"]
    action = body["actions"][0]
    who, name, channel, message = body["user"]["id"], action["value"], body["channel"]["id"], body["message"]
    share = services.config.canary_share

    def act(session: Session) -> tuple[bool, str]:
        operator = slack_user(session, services.config, who)
        if operator.role != Role.operator:
            return False, REFUSED
        try:
            if action["action_id"] == REJECT:
                releases.reject(session, name, operator, reason="rejected in Slack")
                return True, f":no_entry: Rejected by <@{who}>"
            releases.approve(session, name, operator, canary=share if action["action_id"] == CANARY else None)
        except (releases.ReleaseError, releases.ReleaseNotFound) as error:
            session.rollback()
            return False, f"Nothing changed: {error}"
        done = f"as a canary on {share:.0%} of conversations" if action["action_id"] == CANARY else "for everyone"
        return True, f":white_check_mark: Approved by <@{who}> {done}"

    changed, line = await services.in_session(act)
    if not changed:
        await call(client, "chat.postEphemeral", channel=channel, user=who, text=line)
        return
    await call(client, "chat.update", channel=channel, ts=message["ts"], text=line,
               blocks=blocks.release_decided(message.get("blocks", []), line))


def register(app: AsyncApp) -> None:
    for action_id in blocks.RELEASE_ACTIONS:
        app.action(action_id)(decide)
