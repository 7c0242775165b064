"""Logs and traces as an operator's stack reads them: `tuneloop serve` (a subprocess, as deployed)
with TUNELOOP_LOG_FORMAT=json and the standard OTEL_* variables pointing at a local OTLP/HTTP
receiver; the official OpenAI client makes a turn. And with no OTEL_* variable, no tracing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from openai import OpenAI
from sqlmodel import Session

from store.db import make_engine
from store.models import Response
from tests.conftest import free_port
from tests.test_loop import eventually
from tests.test_vllm_serving import _ready


@contextmanager
def otlp_receiver() -> Iterator[tuple[str, list]]:
    """An OTLP/HTTP endpoint that keeps the spans it is sent (protobuf, as the exporter sends)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    spans: list = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == "/v1/traces":
                request = ExportTraceServiceRequest.FromString(body)
                spans.extend(span for resource in request.resource_spans for scope in resource.scope_spans
                             for span in scope.spans)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", spans
    finally:
        server.shutdown()


def test_json_logs_and_otlp_traces_follow_a_turn_by_its_request_id(tiny_model, tmp_path):
    port = free_port()
    log_path = tmp_path / "service.log"
    with otlp_receiver() as (endpoint, spans):
        env = {**os.environ, "TUNELOOP_MODEL": str(tiny_model), "TUNELOOP_DATA_DIR": str(tmp_path / "var"),
               "TUNELOOP_PORT": str(port), "TUNELOOP_ENGINE": "transformers", "TUNELOOP_MAX_TOKENS": "6",
               "TUNELOOP_REVIEW_SCORING": "false", "TUNELOOP_LOG_FORMAT": "json", "HF_HUB_OFFLINE": "1",
               "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
        with log_path.open("wb") as output:
            service = subprocess.Popen([sys.executable, "-m", "tuneloop.cli", "serve"], env=env, stdout=output,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            assert eventually(lambda: _ready(url), timeout=180), log_path.read_text()[-2000:]
            client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
            mine = f"req-{uuid.uuid4().hex[:12]}"
            raw = client.chat.completions.with_raw_response.create(
                model="tuneloop", messages=[{"role": "user", "content": "hello"}],
                extra_headers={"X-Request-ID": mine})
            assert raw.headers["X-Request-ID"] == mine  # the caller's id, returned
            answer_id = raw.headers["X-Tuneloop-Response-Id"]
            made = client.chat.completions.with_raw_response.create(
                model="tuneloop", messages=[{"role": "user", "content": "hi"}])
            assert len(made.headers["X-Request-ID"]) >= 16  # none sent: one is made
            assert eventually(lambda: any(span.name.startswith("POST /v1/chat/completions") for span in spans),
                              timeout=30)
        finally:
            service.send_signal(signal.SIGTERM)
            service.wait(60)

    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]  # every line JSON
    assert all({"time", "level", "logger", "message", "request_id"} <= line.keys() for line in lines)
    assert any(line["request_id"] == mine and line["logger"] == "uvicorn.access" for line in lines)
    database = make_engine(f"sqlite:///{tmp_path / 'var' / 'tuneloop.db'}")
    with Session(database) as session:
        assert session.get(Response, uuid.UUID(answer_id)).trace["request_id"] == mine  # into the store
    database.dispose()
    names = {span.name for span in spans}
    assert any(name.startswith("POST /v1/chat/completions") for name in names)  # FastAPI's span
    kinds = {attribute.key for span in spans for attribute in span.attributes}
    assert "db.system" in kinds or "db.system.name" in kinds  # SQLAlchemy's spans, in the same export


def test_without_otel_variables_nothing_is_traced(settings, monkeypatch):
    from tuneloop.app import create_app

    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert create_app(settings).state.tracing is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert create_app(settings).state.tracing is None  # the standard switch wins
