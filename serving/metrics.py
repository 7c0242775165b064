"""What serving tells Prometheus (GET /metrics; prometheus-client's default registry, or its
multiprocess mode where PROMETHEUS_MULTIPROC_DIR is set): generation speed per engine, the
in-process engine's batches and queue, the releases serving routes to, and the canary's
statistics. Request latency per route and status is prometheus-fastapi-instrumentator's."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

FIRST_TOKEN = Histogram("tuneloop_time_to_first_token_seconds", "From a turn's start to its first piece of text",
                        ["engine"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64))
TOKENS_PER_SECOND = Histogram("tuneloop_generation_tokens_per_second",
                              "An answer's tokens over the time since its turn began", ["engine"],
                              buckets=(1, 2, 5, 10, 20, 40, 80, 160, 320, 640))
GENERATED_TOKENS = Counter("tuneloop_generated_tokens", "Tokens generated", ["engine"])
ANSWERS = Counter("tuneloop_answers", "Answers given, by engine and how they ended", ["engine", "finish_reason"])
ANSWER_FAILURES = Counter("tuneloop_answer_failures", "Answers the engine could not give", ["engine"])
BATCH_SIZE = Histogram("tuneloop_engine_batch_size", "The in-process engine's running batch each time requests joined",
                       buckets=(1, 2, 4, 8, 16, 32, 64))
QUEUE_DEPTH = Gauge("tuneloop_engine_queue_depth", "Requests waiting for the in-process engine", multiprocess_mode="max")
RELEASE = Gauge("tuneloop_release", "1 for the release serving routes to, by role (active, canary)",
                ["role", "release"], multiprocess_mode="max")
CANARY_SHARE = Gauge("tuneloop_canary_share", "Share of conversations the canary answers", multiprocess_mode="max")
CANARY_STATISTIC = Gauge("tuneloop_canary_statistic", "A canary test's log likelihood ratio", ["test"],
                         multiprocess_mode="max")
CANARY_BOUNDARY = Gauge("tuneloop_canary_boundary", "Where a canary test decides", ["test"], multiprocess_mode="max")
CANARY_EVENTS = Gauge("tuneloop_canary_events", "What users said about the canary and the active release so far",
                      multiprocess_mode="max")


def routed(active: str | None, canary: str | None, share: float) -> None:
    """Serving now routes to `active` (and `canary` on `share` of conversations)."""
    RELEASE.clear()
    if active:
        RELEASE.labels("active", active).set(1)
    if canary:
        RELEASE.labels("canary", canary).set(1)
    CANARY_SHARE.set(share if canary else 0.0)


def canary_judged(status: dict | None) -> None:
    CANARY_STATISTIC.clear()
    CANARY_BOUNDARY.clear()
    if status is None:
        CANARY_EVENTS.set(0)
        return
    CANARY_EVENTS.set(status["events"])
    tests = {**status["tests"], **({"promotion": status["promotion"]} if status.get("promotion") else {})}
    for name, test in tests.items():
        CANARY_STATISTIC.labels(name).set(test["log_ratio"])
        CANARY_BOUNDARY.labels(name).set(test["boundary"])
