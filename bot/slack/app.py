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

from bot.slack import listeners
from bot.slack.announce import Announcer
from bot.slack.services import SlackServices
from feedback import crud
from tuneloop.settings import Settings

log = logging.getLogger(__name__)


def web_client(settings: Settings) -> AsyncWebClient:
    retries = [AsyncRateLimitErrorRetryHandler(max_retry_count=3), AsyncConnectionErrorRetryHandler(max_retry_count=2)]
    return AsyncWebClient(token=settings.slack_bot_token, base_url=settings.slack_api_url, retry_handlers=retries)


def build_app(settings: Settings, services: Any) -> AsyncApp:
    """The bolt app. `services()` returns the SlackServices once the FastAPI app has started."""
    app = AsyncApp(
        client=web_client(settings),
        signing_secret=settings.slack_signing_secret or None,
        # Socket Mode messages come over our own authenticated connection, unsigned.
        request_verification_enabled=not settings.slack_socket_mode,
    )

    @app.middleware
    async def provide_services(context: AsyncBoltContext, next: Any) -> Any:  # noqa: A002 - bolt's name
        context["tuneloop"] = services()
        return await next()

    @app.middleware
    async def handle_each_event_once(body: dict, context: AsyncBoltContext, next: Any) -> Any:  # noqa: A002
        """Slack retries an event it thinks we missed (X-Slack-Retry-Num); answer it once."""
        event_id = body.get("event_id") if body.get("type") == "event_callback" else None
        if event_id:
            key = f"event:{event_id}"
            first = await context["tuneloop"].in_session(lambda session: crud.claim_slack_delivery(session, key))
            if not first:
                return BoltResponse(status=200, body="")
        return await next()

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
        settings = self.services.settings
        if settings.slack_operators_channel:
            self._tasks.append(asyncio.create_task(self.announcer.run(), name="tuneloop-slack-announcer"))
        if settings.slack_socket_mode:
            from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

            self._socket = AsyncSocketModeHandler(self.app, settings.slack_app_token)
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
