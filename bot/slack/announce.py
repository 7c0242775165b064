"""Candidate releases and canaries' own decisions announced in the operators' channel, once,
whichever replica sees them first.

The nightly job runs in another process; like serving, the announcer follows the
database. A post that fails is un-claimed, so the next look tries it again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

from slack_sdk.web.async_client import AsyncWebClient
from sqlmodel import Session, select

from bot.slack import blocks
from bot.slack.calls import call
from bot.slack.services import SlackServices
from store import releases, slack_inbox
from serving.canary import DECIDE
from store.models import AuditLog, Release, ReleaseState, utcnow

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
        """Post each candidate and each canary decision not yet announced; how many were posted."""
        return await self._announce_candidates() + await self._announce_canary_decisions()

    async def _announce_candidates(self) -> int:
        share, posted = self.services.config.canary_share, 0
        for name, report in await self.services.in_session(self._claim_new):
            posted += await self._post(_key(name), name, report,
                                       lambda url: blocks.release_candidate(name, report, url, share))  # noqa: B023
        return posted

    async def _announce_canary_decisions(self) -> int:
        posted = 0
        for entry_id, name, details, report in await self.services.in_session(self._claim_decisions):
            posted += await self._post(f"canary:{entry_id}", name, report,
                                       lambda url: blocks.canary_decision(name, details, url))  # noqa: B023
        return posted

    async def _post(self, key: str, name: str, report: dict, message: Callable[[str], list[dict]]) -> int:
        """Post one claimed announcement, its blocks made with the report's link (the headline is
        the notification's text); un-claim it when the post fails, so the next look tries again.
        1 if posted. `message` is called here, at once (the loops' lambdas bind their row)."""
        config = self.services.config
        url = f"{config.public_url.rstrip('/')}{report_link(name, report)}" if config.public_url else ""
        built = message(url)
        sent = await call(self.client, "chat.postMessage", channel=config.operators_channel,
                          text=built[0]["text"]["text"], blocks=built)
        if sent is None:
            await self.services.in_session(lambda session: slack_inbox.forget_slack_delivery(session, key=key))
            return 0
        return 1

    def _claim_decisions(self, session: Session) -> list[tuple[int, str, dict, dict]]:
        """The canary decisions of the last day no replica has posted yet (serving/canary.py)."""
        recent = select(AuditLog).where(AuditLog.action == DECIDE, AuditLog.created_at >= utcnow() - timedelta(days=1))
        claimed = []
        for entry in session.exec(recent):
            if not slack_inbox.claim_slack_delivery(session, key=f"canary:{entry.id}"):
                continue
            name = entry.target.removeprefix("release:")
            release = session.exec(select(Release).where(Release.name == name)).first()
            if release is not None:
                releases.share_report(session, release=release)
                claimed.append((entry.id, name, entry.details, release.report))
        return claimed

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
