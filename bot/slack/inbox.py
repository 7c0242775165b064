"""Slack events, effectively exactly once: kept in the store until their work is done.

Slack wants an answer within three seconds and retries an event it got none for; the work (an
answer from the model) takes longer, so bolt acknowledges first and works after. Marking an
event handled when it arrives loses it if the process dies mid-work (Slack got its 200 and never
retries); marking it when the work ends answers twice when a retry comes while the work goes on.
So an event is an inbox entry (`store.models.SlackDelivery`):

- `take`: kept with its body and leased to this process (a retry, or a replica, whose lease
  is still running, is answered 200 and dropped);
- `exactly_once` around each event listener: renews the lease while the work goes on and marks
  the event done when the work ends (a failure too: its user has been told, and the log has it);
  an event no listener takes is done at once;
- `Recovery`: events whose lease ran out undone (their holder died) are dispatched again;
  the message such an event had already posted is edited, not posted again (`posted_ts`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.async_app import AsyncApp, AsyncBoltContext
from slack_bolt.request.async_request import AsyncBoltRequest

from store import slack_inbox

log = logging.getLogger(__name__)
LEASE_S = 30.0  # renewed every LEASE_S / 3 while the work goes on; run out means its holder died
KEY = "tuneloop_delivery"  # where the context carries the event's inbox key


def key_of(body: dict) -> str | None:
    event_id = body.get("event_id") if body.get("type") == "event_callback" else None
    return f"event:{event_id}" if event_id else None


async def take(services: Any, body: dict) -> bool:
    key = key_of(body)
    return key is None or await services.in_session(
        lambda session: slack_inbox.take_slack_event(session, key=key, body=body, lease_s=LEASE_S))


def exactly_once(listener: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """Wrap an event listener: the lease is renewed while it runs, the event done when it returns."""

    @functools.wraps(listener)
    async def run(*args: Any, context: AsyncBoltContext, **kwargs: Any) -> None:
        key, services = context.get(KEY), context["tuneloop"]
        if key is None:
            return await listener(*args, context=context, **kwargs)
        renewing = asyncio.create_task(_renew(services, key))
        try:
            await listener(*args, context=context, **kwargs)
        finally:
            renewing.cancel()
            await finish(services, key)

    return run


async def finish(services: Any, key: str | None) -> None:
    if key:
        await services.in_session(lambda session: slack_inbox.finish_slack_event(session, key=key))


async def _renew(services: Any, key: str) -> None:
    while True:
        await asyncio.sleep(LEASE_S / 3)
        await services.in_session(lambda session: slack_inbox.renew_slack_event(session, key=key, lease_s=LEASE_S))


async def remember_post(context: AsyncBoltContext, ts: str | None) -> None:
    key = context.get(KEY)
    if key and ts:
        await context["tuneloop"].in_session(lambda session: slack_inbox.remember_slack_post(session, key=key, ts=ts))


async def earlier_post(context: AsyncBoltContext) -> str | None:
    """The message this event's answer was already posted as, before its first holder died."""
    key = context.get(KEY)
    if not key:
        return None
    return await context["tuneloop"].in_session(lambda session: slack_inbox.slack_post_of(session, key=key))


class Recovery:
    """Dispatches again the events whose holder died mid-work (checked every LEASE_S)."""

    def __init__(self, app: AsyncApp, services: Any, every_s: float = LEASE_S) -> None:
        self.app, self.services, self.every_s = app, services, every_s

    async def run(self) -> None:
        while True:
            try:
                await self.once()
            except Exception:  # keep looking; the store may be back next time
                log.exception("looking for Slack events to handle again failed")
            await asyncio.sleep(self.every_s)

    async def once(self) -> int:
        stranded = await self.services.in_session(
            lambda session: [(d.key, d.body) for d in slack_inbox.stranded_slack_events(session)])
        for key, body in stranded:
            log.warning("handling Slack %s again: its first holder stopped before finishing", key)
            # As a Socket Mode message: it was verified when it first came in, and is not re-signed.
            await self.app.async_dispatch(AsyncBoltRequest(body=json.dumps(body), mode="socket_mode"))
        return len(stranded)
