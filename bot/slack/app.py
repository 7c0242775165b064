"""The bolt app, its HTTP route (`/slack/events`) and its Socket Mode connection.

Built by the FastAPI app factory when Slack tokens are set. Listeners reach the chat
service and the store through `context["tuneloop"]`, filled by the first middleware.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Request
from slack_bolt import BoltResponse
from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp, AsyncBoltContext
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from bot.slack import inbox, listeners
from bot.slack.announce import Announcer
from bot.slack.config import SlackConfig
from bot.slack.services import SlackServices

log = logging.getLogger(__name__)


def web_client(config: SlackConfig) -> AsyncWebClient:
    retries = [AsyncRateLimitErrorRetryHandler(max_retry_count=3), AsyncConnectionErrorRetryHandler(max_retry_count=2)]
    return AsyncWebClient(token=config.bot_token, base_url=config.api_url, retry_handlers=retries)


def build_app(config: SlackConfig, services: Any) -> AsyncApp:
    """The bolt app. `services()` returns the SlackServices once the FastAPI app has started."""
    app = AsyncApp(
        client=web_client(config),
        signing_secret=config.signing_secret or None,
        # Socket Mode messages come over our own authenticated connection, unsigned.
        request_verification_enabled=not config.socket_mode,
    )

    @app.middleware
    async def provide_services(context: AsyncBoltContext, next: Any) -> Any:  # noqa: A002 - bolt's name
        context["tuneloop"] = services()
        return await next()

    @app.middleware
    async def handle_each_event_once(body: dict, context: AsyncBoltContext, next: Any) -> Any:  # noqa: A002
        """Slack retries an event it thinks we missed (X-Slack-Retry-Num): handle it once (bot/slack/inbox.py)."""
        if not await inbox.take(context["tuneloop"], body):
            return BoltResponse(status=200, body="")
        context[inbox.KEY] = inbox.key_of(body)
        response = await next()
        if response is not None and response.status == 404:  # no listener takes it: nothing to finish later
            await inbox.finish(context["tuneloop"], context[inbox.KEY])
        return response

    @app.error
    async def log_errors(error: Exception, body: dict) -> None:
        log.error("a Slack listener failed on a %s: %s", body.get("type", "request"), error, exc_info=error)

    listeners.register(app)
    return app


def router(app: AsyncApp) -> APIRouter:
    handler = AsyncSlackRequestHandler(app)
    routes = APIRouter(tags=["slack"])

    @routes.post("/slack/events", include_in_schema=False)
    async def slack_events(request: Request):  # noqa: ANN202 - a Starlette response
        return await handler.handle(request)

    return routes


class SlackRuntime:
    """What runs beside the HTTP route: the announcer, and Socket Mode when chosen."""

    def __init__(self, app: AsyncApp, services: SlackServices) -> None:
        self.app, self.services = app, services
        self.announcer = Announcer(services, app.client)
        self._tasks: list[asyncio.Task] = []
        self._socket = None

    async def start(self) -> None:
        config = self.services.config
        self._tasks.append(asyncio.create_task(inbox.Recovery(self.app, self.services).run(),
                                               name="tuneloop-slack-recovery"))
        if config.operators_channel:
            self._tasks.append(asyncio.create_task(self.announcer.run(), name="tuneloop-slack-announcer"))
        if config.socket_mode:
            from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

            self._socket = AsyncSocketModeHandler(self.app, config.app_token)
            # connect_async() retries a refused app token forever, and start-up would hang with
            # nothing served: ask for the first address here, where a refusal stops the start.
            try:
                self._socket.client.wss_uri = await self._socket.client.issue_new_wss_url()
            except Exception:
                log.error("Socket Mode could not start: is Slack reachable, and TUNELOOP_SLACK_APP_TOKEN this "
                          "app's xapp-... token with the connections:write scope?")
                await self.stop()
                raise
            await self._socket.connect_async()
            log.info("Slack: connected over Socket Mode")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._socket is not None:
            await self._socket.close_async()
