"""Shared fixtures: databases (SQLite and the real PostgreSQL), models, apps and live servers."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from store.db import make_engine  # noqa: E402
from store.migrate import upgrade  # noqa: E402
from tests.models import tiny_model_dir, vllm_tiny_model_dir  # noqa: E402
from tuneloop.settings import Settings  # noqa: E402

POSTGRES_URL = os.environ.get("TUNELOOP_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return tiny_model_dir()


@pytest.fixture(scope="session")
def vllm_model() -> Path:
    """The tiny twin vLLM's CPU kernels take (head size 64)."""
    return vllm_tiny_model_dir()


@pytest.fixture(scope="session")
def vllm_url(vllm_model: Path, tmp_path_factory) -> Iterator[str]:
    """A real vLLM server (its own venv, `make vllm`) serving the tiny model with runtime LoRA,
    one for the whole session: it takes half a minute to start."""
    from serving.vllm_server import VLLMServer, VLLMServerConfig

    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    server = VLLMServer(VLLMServerConfig(model=str(vllm_model), dtype="float32", max_model_len=512), log_path=log)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_engine(tiny_model: Path):
    """One tiny engine for the session; each app's lifespan starts and stops its worker."""
    from serving.transformers_engine import TransformersEngine

    return TransformersEngine(str(tiny_model), device="cpu", max_batch_size=8, batch_wait_ms=5)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh schema on the real PostgreSQL server, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = make_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def database(database_url: str):
    engine = make_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(tmp_path: Path, tiny_model: Path) -> Settings:
    return Settings(
        _env_file=None,
        data_dir=tmp_path / "var",
        model=str(tiny_model),
        device="cpu",
        max_tokens=12,
        ab_share=0.0,
    )


@pytest.fixture
def client(settings: Settings, tiny_engine):
    from fastapi.testclient import TestClient

    from tuneloop.app import create_app

    with TestClient(create_app(settings, engine=tiny_engine)) as test_client:
        yield test_client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """The app under a real uvicorn on a free port, in a background thread."""

    def __init__(self, app):
        import uvicorn

        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the live server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def live_server(settings: Settings, tiny_engine) -> Iterator[LiveServer]:
    from tuneloop.app import create_app

    with LiveServer(create_app(settings, engine=tiny_engine)) as server:
        yield server
