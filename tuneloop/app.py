"""The app factory: wires settings, store, engine and routers. No domain logic lives here."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from pathlib import Path
from contextlib import asynccontextmanager

import anyio
from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from bot.operator.router import router as releases_router
from bot.web.pages import router as pages_router
from bot.web.router import router as widget_router
from bot.workspace import auth as workspace
from feedback.ingest import RatingWriter
from feedback.limits import RateLimits
from feedback.review_router import router as review_router
from feedback.router import router as feedback_router
from plugins.manager import Plugins, load_plugins
from plugins.turns import PluginHooks
from serving.engine import Engine
from serving.health import router as health_router
from serving.canary import CanaryMonitor
from serving.reconcile import Reconciler
from serving.router import RESPONSE_ID_HEADER
from serving.router import router as openai_router
from serving.routing import LiveReleases
from serving.service import ChatService
from store import releases
from store.db import make_engine, session_scope
from store.migrate import upgrade
from tuneloop import metrics, observability
from tuneloop.engines import build_engine
from tuneloop.http import BodySizeLimit, document_errors, install_error_handlers
from tuneloop.settings import EMBEDDED_MODEL, Settings, get_settings
from tuneloop.wiring import canary_policy, plugin_settings, slack_config

log = logging.getLogger(__name__)
REQUEST_ID_HEADER = "X-Request-ID"


def _nightly(settings: Settings):  # noqa: ANN202
    """Start the nightly training schedule, when one is set."""
    if not settings.nightly_at:
        return None
    from trainer.schedule import NightlyScheduler, parse_hhmm

    scheduler = NightlyScheduler(parse_hhmm(settings.nightly_at), [sys.executable, "-m", "tuneloop.cli", "train"])
    scheduler.start()
    return scheduler


def _review_scorer(settings: Settings, database):
    """Score live answers with the active release's reward model (the reviewers' queue order)."""
    if not settings.review_scoring:
        return None
    from serving.review_scores import ReviewScorer
    from serving.transformers_engine import pick_device
    from serving.weights import resolve_model

    def load(release, folder):
        from trainer.reward_model import RewardModel

        base = resolve_model(release.base_model, settings.models_dir, EMBEDDED_MODEL)
        return RewardModel.load(base, folder, device=pick_device(settings.device))

    scorer = ReviewScorer(database, load)
    scorer.start()
    return scorer


class _FeedbackNotifier:
    """Plugins hear of stored feedback on a thread of their own, so a slow listener never
    holds up the writers (or a listener that raises, the feedback: it is stored first)."""

    def __init__(self, plugins: Plugins) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.plugins = plugins
        self.listeners = ThreadPoolExecutor(1, thread_name_prefix="tuneloop-feedback-listeners")

    def __call__(self, kind: str, response_ids: list[str], user_id: int, details: dict) -> None:
        from plugins.protocols import FeedbackEvent

        self.listeners.submit(self.plugins.notify_feedback, FeedbackEvent(kind, response_ids, user_id, details))

    def close(self) -> None:
        """Tell the listeners what is still queued, then let their thread go."""
        self.listeners.shutdown(wait=True)


def _feedback_notifier(plugins: Plugins) -> _FeedbackNotifier | None:
    return _FeedbackNotifier(plugins) if plugins.feedback_listeners else None


def _mount_slack(app: FastAPI, settings: Settings) -> None:
    """The Slack app, when its tokens are set: `/slack/events` in HTTP mode."""
    app.state.slack = app.state.slack_config = None
    if not settings.slack_enabled:
        return
    from bot.slack.app import build_app, router

    app.state.slack_config = config = slack_config(settings)
    app.state.slack = build_app(config, lambda: app.state.slack_services)
    if not config.socket_mode:  # over Socket Mode nothing unsigned may come in by HTTP
        app.include_router(router(app.state.slack))


async def _start_slack(app: FastAPI, database):  # noqa: ANN001, ANN202
    if app.state.slack is None:
        return None
    from bot.slack.app import SlackRuntime
    from bot.slack.services import SlackServices

    app.state.slack_services = SlackServices(app.state.slack_config, database, app.state.chat,
                                             app.state.notify_feedback)
    runtime = SlackRuntime(app.state.slack, app.state.slack_services)
    await runtime.start()
    return runtime


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Sync endpoints run on anyio's worker threads (40 by default). More threads than
        # cores only queue on the GIL and the database: measured on 2 cores, 40 threads
        # spent a third of the server's time handing the GIL around.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.worker_threads
        # Connections for those threads, plus the chat service's and the reconciler's.
        database = make_engine(settings.database_url, pool_size=settings.worker_threads + 16)
        observability.trace_database(app.state.tracing, database)
        await asyncio.to_thread(upgrade, database)
        with session_scope(database) as session:
            releases.ensure_base_release(session, base_model=settings.model)
        model = engine or await asyncio.to_thread(build_engine, settings)
        await model.start()
        live = LiveReleases()
        reconciler = Reconciler(model, database, live, interval=settings.reload_interval)
        await reconciler.reconcile()  # load the active release before the first request
        following = asyncio.create_task(reconciler.run(), name="tuneloop-reconciler")
        canary = CanaryMonitor(database, canary_policy(settings), settings.canary_check_interval_s,
                               decided=reconciler.wake)
        judging = asyncio.create_task(canary.run(), name="tuneloop-canary")
        app.state.database, app.state.engine, app.state.live = database, model, live
        app.state.reconciler, app.state.canary = reconciler, canary
        app.state.plugins = await asyncio.to_thread(load_plugins, plugin_settings(settings))
        hooks = PluginHooks(app.state.plugins)
        app.state.redact = hooks.redact  # every free text on its way into the store (feedback/redaction.py)
        app.state.chat = ChatService(model, database, live, system_prompt=settings.system_prompt, hooks=hooks,
                                     ab_strategy=settings.ab_strategy, compare_share=settings.canary_compare_share)
        app.state.notify_feedback = _feedback_notifier(app.state.plugins)
        app.state.ratings = RatingWriter(database, notify=app.state.notify_feedback)
        app.state.ratings.start()
        app.state.review_scorer = _review_scorer(settings, database)
        slack = await _start_slack(app, database)
        nightly = _nightly(settings)
        # Everything loaded so far (torch, transformers, the model) lives as long as the
        # process: keep it out of the collector's full passes, which otherwise walk millions
        # of objects and stall every request for tens of milliseconds (Instagram's trick).
        gc.freeze()
        log.info("tuneloop is serving %s on http://%s:%s", settings.model, settings.host, settings.port)
        try:
            yield
        finally:
            if nightly:
                nightly.stop()
            if slack:
                await slack.stop()
            following.cancel()
            judging.cancel()
            if app.state.review_scorer:
                await asyncio.to_thread(app.state.review_scorer.stop)
            await asyncio.to_thread(app.state.ratings.close)  # acknowledged means stored
            if app.state.notify_feedback:  # after the writers: their last batch notifies too
                await asyncio.to_thread(app.state.notify_feedback.close)
            await model.close()
            database.dispose()
            if app.state.tracing is not None:
                app.state.tracing.shutdown()  # what is still batched goes out

    app = FastAPI(title="tuneloop", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.rate_limits = RateLimits({"new sessions": settings.rate_limit_sessions,
                                        "chat turns": settings.rate_limit_chat}, settings.rate_limit_storage)
    install_error_handlers(app)
    document_errors(app)
    # The widget runs on other sites' pages (TUNELOOP_ALLOWED_ORIGINS); it sends a bearer token, never cookies.
    app.add_middleware(CORSMiddleware, allow_origins=settings.allowed_origins, allow_methods=["*"],
                       allow_headers=["*"], expose_headers=[RESPONSE_ID_HEADER, REQUEST_ID_HEADER])
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # X-Request-ID in and out: the caller's, if it is a plain token, else one made here.
    app.add_middleware(CorrelationIdMiddleware, header_name=REQUEST_ID_HEADER, validator=observability.usable_request_id)
    for router in (openai_router, feedback_router, review_router, widget_router, releases_router, pages_router,
                   health_router):
        app.include_router(router)
    _mount_slack(app, settings)
    workspace.install(app)  # the reviewers' and operators' pages, with their session cookie
    if settings.metrics:
        metrics.install(app)  # GET /metrics for Prometheus
    app.state.tracing = observability.start_tracing(app)  # OpenTelemetry, only where OTEL_* asks for it

    return app
