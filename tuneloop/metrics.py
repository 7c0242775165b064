"""GET /metrics for Prometheus.

- Request latency per route and status: prometheus-fastapi-instrumentator, on a registry of the
  app's own (so several apps in one process, as in the tests, never register a metric twice).
- What serving, the engines and the guardrails count as it happens (serving/metrics.py,
  plugins/turns.py), on prometheus-client's default registry.
- What only the store knows, read at each scrape, so every replica tells the same truth: the
  feedback stored, by kind and channel, and the nightly job's last run.

With several worker processes set PROMETHEUS_MULTIPROC_DIR (prometheus-client's multiprocess
mode): the counters and histograms are then summed over the processes.
"""

from __future__ import annotations

import os

from fastapi import FastAPI, Response
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_fastapi_instrumentator import Instrumentator
from prometheus_fastapi_instrumentator.metrics import latency, requests
from sqlalchemy import func
from sqlmodel import Session, col, select

from store.models import Comparison, Conversation, Correction, Rating, TrainingRun, in_utc
from store.models import Response as Answer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StoreCollector:
    """Figures read from the store at each scrape."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def collect(self):  # noqa: ANN201 - prometheus-client's collector protocol
        database = getattr(self.app.state, "database", None)
        if database is None:  # not started yet
            return
        with Session(database) as session:
            yield self._feedback(session)
            yield from self._last_run(session)

    def _feedback(self, session: Session) -> GaugeMetricFamily:
        stored = GaugeMetricFamily("tuneloop_feedback_stored", "Feedback in the store, by kind and channel",
                                   labels=["kind", "channel"])
        kinds = {"rating": (Rating, Rating.response_id), "comparison": (Comparison, Comparison.response_a_id),
                 "correction": (Correction, Correction.response_id)}
        for kind, (model, response_id) in kinds.items():
            query = (select(Conversation.channel, func.count()).select_from(model)
                     .join(Answer, col(Answer.id) == response_id)
                     .join(Conversation, col(Conversation.id) == col(Answer.conversation_id))
                     .group_by(Conversation.channel))
            for channel, count in session.exec(query):
                stored.add_metric([kind, channel.value], count)
        return stored

    def _last_run(self, session: Session):  # noqa: ANN202
        run = session.exec(select(TrainingRun).order_by(col(TrainingRun.id).desc())).first()
        if run is None:
            return
        outcome = GaugeMetricFamily("tuneloop_nightly_last_run", "1 for the last nightly run's outcome",
                                    labels=["status", "recipe"])
        outcome.add_metric([run.status.value, run.recipe], 1)
        yield outcome
        yield GaugeMetricFamily("tuneloop_nightly_last_run_started_seconds", "When it started (Unix time)",
                                value=in_utc(run.started_at).timestamp())
        if run.finished_at is not None:
            yield GaugeMetricFamily("tuneloop_nightly_last_run_duration_seconds", "How long it ran",
                                    value=(run.finished_at - run.started_at).total_seconds())
        yield GaugeMetricFamily("tuneloop_nightly_last_run_pairs", "Preference pairs it trained on",
                                value=(run.data_counts or {}).get("train", 0))


def install(app: FastAPI) -> None:
    own = CollectorRegistry(auto_describe=True)
    instrumentator = Instrumentator(registry=own, should_group_status_codes=False,
                                    excluded_handlers=["/metrics", "/healthz", "/readyz"])
    # Latency per route and status, and the count of requests: streams are timed to their end.
    instrumentator.add(latency(registry=own, should_include_status=True,
                               buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)))
    instrumentator.add(requests(registry=own))
    instrumentator.instrument(app)
    store = StoreCollector(app)
    own.register(store)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # every process's values, summed, and the store's
            processes = CollectorRegistry()
            MultiProcessCollector(processes)
            processes.register(store)
            return Response(generate_latest(processes), media_type=CONTENT_TYPE)
        return Response(generate_latest(REGISTRY) + generate_latest(own), media_type=CONTENT_TYPE)
