"""Candidate releases announced in the operators' channel, once, whichever replica sees them first.

The nightly job runs in another process; like serving, the announcer follows the
database. A post that fails is un-claimed, so the next look tries it again.
"""

from __future__ import annotations

import asyncio
import logging

from slack_sdk.web.async_client import AsyncWebClient
from sqlmodel import Session, select

from bot.slack import blocks
from bot.slack.calls import call
from bot.slack.services import SlackServices
from store import releases, slack_inbox
from store.models import Release, ReleaseState

log = logging.getLogger(__name__)


class Announcer:
    def __init__(self, services: SlackServices, client: AsyncWebClient) -> None:
        self.services, self.client = services, client

    async def run(self) -> None:
        while True:
            try:
                await self.announce_new()
            except Exception:  # a database hiccup: logged, and the next look tries again
                log.exception("looking for candidate releases to announce failed")
            await asyncio.sleep(self.services.config.announce_interval)

    async def announce_new(self) -> int:
        """Post each candidate not yet announced; how many were posted."""
        claimed = await self.services.in_session(self._claim_new)
        posted = 0
        for name, report in claimed:
            config = self.services.config
            url = f"{config.public_url.rstrip('/')}{report_link(name, report)}" if config.public_url else ""
            sent = await call(self.client, "chat.postMessage", channel=config.operators_channel,
                              text=f"Release {name} is a candidate",
                              blocks=blocks.release_candidate(name, report, url, config.canary_share))
            if sent is None:
                await self.services.in_session(
                    lambda session, key=_key(name): slack_inbox.forget_slack_delivery(session, key=key))
            else:
                posted += 1
        return posted

    def _claim_new(self, session: Session) -> list[tuple[str, dict]]:
        candidates = session.exec(select(Release).where(Release.state == ReleaseState.candidate)).all()
        claimed = [r for r in candidates if slack_inbox.claim_slack_delivery(session, key=_key(r.name))]
        for release in claimed:
            releases.share_report(session, release=release)
        return [(r.name, r.report) for r in claimed]


def report_link(name: str, report: dict) -> str:
    """The report page, openable from the message: its key stands in for an operator's token."""
    return f"/api/releases/{name}/report?key={report[releases.REPORT_KEY]}"


def _key(name: str) -> str:
    return f"announce:{name}"
