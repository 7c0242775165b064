"""The loop closes: simulated users, a nightly run, approval, and hot swap under load."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session, select

from store.models import AuditLog, Release, ReleaseState, Response, RunStatus, TrainingRun
from tests.adapters import add_candidate, make_adapter, operator_token
from tests.conftest import LiveServer, free_port
from trainer import simulate
from trainer.config import NightlyConfig
from trainer.gate import GateThresholds
from trainer.judges import load_judge
from trainer.nightly import Environment, main

TINY_RUN = dict(max_steps=2, per_device_train_batch_size=2, per_device_eval_batch_size=2, min_pairs=4,
                eval_prompts=4, eval_max_tokens=6, judge="tests.judges:shorter")


def chat(url: str, token: str | None = None, max_tokens: int = 4) -> Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {"model": "tuneloop", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hello"}]}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60)
    reply.raise_for_status()
    return reply.json()["id"]


def release_of(database, response_id: str) -> str:  # noqa: ANN001
    with Session(database) as session:
        response = session.get(Response, uuid.UUID(response_id))
        return session.get(Release, response.release_id).name


def eventually(check, timeout: float = 20.0):  # noqa: ANN001
    """Poll until `check()` is truthy: serving follows the database at its own pace."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def environment(live_server, tmp_path: Path, gate: GateThresholds) -> Environment:  # noqa: ANN001
    settings = live_server.app.state.settings
    return Environment(settings.database_url, tmp_path / "var", settings.model, gate=gate, device="cpu")


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory):
    return make_adapter(tiny_model, tmp_path_factory.mktemp("adapter"))


def test_simulate_train_approve_and_the_next_answer_comes_from_the_new_release(live_server, tmp_path):
    live_server.app.state.settings.ab_share = 1.0
    stats = asyncio.run(simulate.run(live_server.url, users=3, events=18, judge=load_judge("tests.judges:shorter")))
    assert stats["comparisons"] == 18 and stats["errors"] == 0

    result = main(NightlyConfig.from_flags(**TINY_RUN), environment(live_server, tmp_path, GateThresholds.open()))
    assert result.status == RunStatus.succeeded and result.state == ReleaseState.candidate
    assert result.report["data"]["train"] >= 4 and result.report["evaluation"]["win_rate"]["n"] > 0
    assert (tmp_path / "var" / "releases" / result.release / "report.html").is_file()
    card = (tmp_path / "var" / "releases" / result.release / "adapter" / "README.md").read_text()
    assert "library_name: peft" in card and f"# {result.release}" in card and "--lora-modules" in card
    database = live_server.app.state.database
    with Session(database) as session:
        run = session.get(TrainingRun, result.run_id)
        assert run.status == RunStatus.succeeded and run.data_counts["new_pairs"] >= 4 and "Gate passed" in run.log

    operator = {"Authorization": f"Bearer {operator_token(database)}"}
    approved = httpx.post(f"{live_server.url}/api/releases/{result.release}/approve", headers=operator)
    assert approved.status_code == 200
    assert eventually(lambda: release_of(database, chat(live_server.url)) == result.release)


def test_too_little_data_stops_cleanly(live_server, tmp_path):
    result = main(NightlyConfig.from_flags(**TINY_RUN), environment(live_server, tmp_path, GateThresholds()))
    assert result.status == RunStatus.skipped and "too little new data: 0 new pairs" in result.message
    with Session(live_server.app.state.database) as session:
        assert session.exec(select(Release).where(Release.name != "base")).all() == []


def test_a_failed_gate_leaves_serving_untouched(live_server, tmp_path):
    live_server.app.state.settings.ab_share = 1.0
    asyncio.run(simulate.run(live_server.url, users=2, events=12, judge=load_judge("tests.judges:shorter")))
    result = main(NightlyConfig.from_flags(**TINY_RUN), environment(live_server, tmp_path, replace(GateThresholds.open(), min_win_rate=1.01)))
    assert result.state == ReleaseState.failed_gate
    assert result.message.startswith("Gate failed: win rate against the active release")
    database = live_server.app.state.database
    operator = {"Authorization": f"Bearer {operator_token(database)}"}
    refused = httpx.post(f"{live_server.url}/api/releases/{result.release}/approve", headers=operator)
    assert refused.status_code == 409
    assert release_of(database, chat(live_server.url)) == "base"
    assert live_server.app.state.engine.adapters() == set()


def test_a_corrupt_adapter_is_refused_and_serving_keeps_the_old_release(live_server, tiny_model, tmp_path):
    adapter = make_adapter(tiny_model, tmp_path / "adapter")
    database = live_server.app.state.database
    add_candidate(database, "r-corrupt", adapter)
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64] + b"\0" * 64)  # bit rot after approval was prepared
    operator = {"Authorization": f"Bearer {operator_token(database)}"}
    assert httpx.post(f"{live_server.url}/api/releases/r-corrupt/approve", headers=operator).status_code == 200

    def refused() -> bool:
        with Session(database) as session:
            return session.exec(select(AuditLog).where(AuditLog.action == "serving.refuse")).first() is not None

    assert eventually(refused)
    assert release_of(database, chat(live_server.url)) == "base"
    with Session(database) as session:
        entry = session.exec(select(AuditLog).where(AuditLog.action == "serving.refuse")).one()
    assert "checksum mismatch" in entry.details["reason"]


async def _stream(url: str, max_tokens: int, started: asyncio.Event) -> tuple[str, str, float]:
    body = {"model": "tuneloop", "stream": True, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": "Tell me a long story"}]}
    lines = []
    async with httpx.AsyncClient(timeout=120) as http, http.stream("POST", f"{url}/v1/chat/completions", json=body) as reply:
        reply.raise_for_status()
        async for line in reply.aiter_lines():
            if line.startswith("data:"):
                lines.append(line)
                started.set()
    return reply.headers["X-Tuneloop-Response-Id"], lines[-1], time.monotonic()


def test_a_swap_under_concurrent_streams_fails_none(live_server, adapter):
    database, live = live_server.app.state.database, live_server.app.state.live
    add_candidate(database, "r-swap", adapter)
    operator = {"Authorization": f"Bearer {operator_token(database)}"}

    async def scenario():
        started = [asyncio.Event() for _ in range(8)]
        streams = [asyncio.create_task(_stream(live_server.url, 300, event)) for event in started]
        await asyncio.gather(*(event.wait() for event in started))  # all 8 are streaming
        async with httpx.AsyncClient() as http:
            approved = await http.post(f"{live_server.url}/api/releases/r-swap/approve", headers=operator)
        approved_at = time.monotonic()
        return approved, approved_at, await asyncio.gather(*streams)

    approved, approved_at, finished = asyncio.run(scenario())
    assert approved.status_code == 200
    assert min(done for _, _, done in finished) > approved_at  # approved while all 8 were streaming
    assert [last for _, last, _ in finished] == ["data: [DONE]"] * 8
    assert {release_of(database, rid) for rid, _, _ in finished} == {"base"}  # each names the release that made it
    assert eventually(lambda: release_of(database, chat(live_server.url)) == "r-swap")
    # Once the old release's requests are done, nothing old stays loaded.
    assert eventually(lambda: live_server.app.state.engine.adapters() == {live.active.adapter})


def test_the_service_that_takes_the_approval_follows_at_once(settings, tiny_engine, adapter):
    from tuneloop.app import create_app

    # A poll an hour apart: only the approval's own wake-up can make the swap.
    with LiveServer(create_app(settings.model_copy(update={"reload_interval": 3600.0}), engine=tiny_engine)) as server:
        database = server.app.state.database
        assert release_of(database, chat(server.url)) == "base"
        add_candidate(database, "r-now", adapter)
        operator = {"Authorization": f"Bearer {operator_token(database)}"}
        assert httpx.post(f"{server.url}/api/releases/r-now/approve", headers=operator).status_code == 200
        assert eventually(lambda: release_of(database, chat(server.url)) == "r-now", timeout=20)
        assert httpx.post(f"{server.url}/api/releases/rollback", headers=operator).status_code == 200
        assert eventually(lambda: release_of(database, chat(server.url)) == "base", timeout=20)


def test_a_second_service_process_on_the_same_database_follows(live_server, adapter, tiny_model, tmp_path):
    port = free_port()
    settings = live_server.app.state.settings
    env = {**os.environ, "TUNELOOP_DATABASE_URL": settings.database_url, "TUNELOOP_MODEL": str(tiny_model),
           "TUNELOOP_DATA_DIR": str(tmp_path / "second"), "TUNELOOP_PORT": str(port), "TUNELOOP_DEVICE": "cpu",
           "TUNELOOP_MAX_TOKENS": "4", "HF_HUB_OFFLINE": "1", "TUNELOOP_ENGINE": "transformers"}
    second = subprocess.Popen([sys.executable, "-m", "tuneloop.cli", "serve"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        assert eventually(lambda: _up(url), timeout=90), second.stderr.read1().decode() if second.poll() else "no start"
        database = live_server.app.state.database
        assert release_of(database, chat(url)) == "base"
        add_candidate(database, "r-both", adapter)
        operator = {"Authorization": f"Bearer {operator_token(database)}"}
        assert httpx.post(f"{live_server.url}/api/releases/r-both/approve", headers=operator).status_code == 200
        assert eventually(lambda: release_of(database, chat(url)) == "r-both")
        assert eventually(lambda: release_of(database, chat(live_server.url)) == "r-both")
    finally:
        second.terminate()
        second.wait(30)


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


