"""One module per kind of interaction; each registers its listeners on the bolt app."""

from __future__ import annotations

from slack_bolt.async_app import AsyncApp

from bot.slack.listeners import approvals, compare, messages, review, votes


def register(app: AsyncApp) -> None:
    for module in (messages, votes, compare, review, approvals):
        module.register(app)
