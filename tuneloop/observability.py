"""Logs and traces, for the stack people already run.

- **Logs**: one format for every logger (uvicorn's too): text, or with TUNELOOP_LOG_FORMAT=json
  one JSON object per line (python-json-logger). Each line carries the request id.
- **Request ids**: asgi-correlation-id takes the caller's `X-Request-ID` or makes one, returns it
  in the response header, and keeps it in a context variable; it follows the turn through the
  plugins (their threads copy the context), the engine (sent on to vLLM as its `X-Request-Id`),
  and the store (each answer's trace records it).
- **Traces**: OpenTelemetry (FastAPI, httpx and SQLAlchemy instrumentation), exported over OTLP
  only when its standard variables name an endpoint (OTEL_EXPORTER_OTLP_ENDPOINT or
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT; OTEL_SDK_DISABLED=true wins). Otherwise nothing is set up
  and nothing leaves the machine.
"""

from __future__ import annotations

import logging
import os
import sys

from asgi_correlation_id import CorrelationIdFilter

TEXT = "%(asctime)s %(levelname)s %(name)s [%(correlation_id)s]: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s %(correlation_id)s"


def configure_logging(log_format: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(CorrelationIdFilter(default_value="-"))
    if log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter(JSON_FIELDS, rename_fields={
            "asctime": "time", "levelname": "level", "name": "logger", "correlation_id": "request_id"}))
    else:
        handler.setFormatter(logging.Formatter(TEXT))
    handler.tuneloop = True  # ours: replaced when logging is configured again, others are left
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "tuneloop", False)] + [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # through the one handler above
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    if log_format == "json":
        _only_log_lines()


def _only_log_lines() -> None:
    """Nothing but log records on stderr: Python warnings become records, transformers logs
    through the root logger, and no progress bar draws on the stream a log shipper reads."""
    logging.captureWarnings(True)
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TQDM_DISABLE"] = "1"
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
    transformers_logging.disable_progress_bar()


def usable_request_id(value: str) -> bool:
    """A caller's request id is kept if it is a plain token (a UUID, a trace id, "req-123"): it
    goes into log lines and headers, so nothing else is."""
    return 0 < len(value) <= 128 and all(c.isascii() and (c.isalnum() or c in "._:-") for c in value)


def tracing_wanted() -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def start_tracing(app) -> object | None:  # noqa: ANN001
    """The tracer provider exporting over OTLP, with FastAPI and httpx instrumented; None when off."""
    if not tracing_wanted():
        return None
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME",
                                                                                         "tuneloop")}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # endpoint, headers: OTEL_* variables
    trace.set_tracer_provider(provider)
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, excluded_urls="healthz,readyz,metrics")
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    return provider


def trace_database(provider, database) -> None:  # noqa: ANN001
    if provider is None:
        return
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    # The instrumentation's declared range stops below SQLAlchemy 2.1; its engine events are the
    # same in 2.1 (the test checks that its spans arrive), so the range check is skipped.
    SQLAlchemyInstrumentor().instrument(engine=database, tracer_provider=provider, skip_dep_check=True)
