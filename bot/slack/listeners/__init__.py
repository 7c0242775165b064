"""One module per kind of interaction; each registers its listeners on the bolt app."""

from __future__ import annotations

from slack_bolt.async_app import AsyncApp

from bot.slack.listeners import compare, messages, releases, review, votes


def register(app: AsyncApp) -> None:
    for module in (messages, votes, compare, review, releases):
        module.register(app)
