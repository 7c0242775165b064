"""tuneloop serving through vLLM: the official OpenAI client against tuneloop, an operator's
approval hot-swapped into the vLLM server under load, an adapter vLLM refuses, a fleet whose
second replica restarts, and `tuneloop serve --engine vllm` starting, supervising and stopping
a vLLM server of its own."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx
import pytest
from openai import AsyncOpenAI, BadRequestError, OpenAI
from sqlmodel import Session, select

from serving.vllm_server import VLLMServer, VLLMServerConfig
from store.models import AuditLog
from tests.adapters import add_candidate, make_adapter, operator_token
from tests.conftest import LiveServer, free_port
from tests.test_loop import _stream, chat, eventually, release_of

pytestmark = pytest.mark.timeout(900)


@pytest.fixture
def vllm_settings(settings, vllm_model, vllm_url):
    return settings.model_copy(update={"engine": "vllm", "vllm_urls": [vllm_url], "model": str(vllm_model)})


@pytest.fixture
def on_vllm(vllm_settings):
    from tuneloop.app import create_app

    with LiveServer(create_app(vllm_settings)) as server:
        yield server


def test_the_openai_client_streams_through_tuneloop_from_vllm(on_vllm):
    client = OpenAI(base_url=f"{on_vllm.url}/v1", api_key="unused")
    asked = {"model": "tuneloop", "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8,
             "temperature": 0}
    whole = client.chat.completions.create(**asked)
    pieces = [c.choices[0].delta.content for c in client.chat.completions.create(**asked, stream=True)
              if c.choices and c.choices[0].delta.content]
    assert whole.usage.completion_tokens == 8 and whole.usage.prompt_tokens > 3
    # Greedy: the same answer, whole or streamed (piece by piece: tests/test_vllm_engine.py).
    assert pieces and "".join(pieces) == whole.choices[0].message.content
    assert type(on_vllm.app.state.engine).__name__ == "VLLMEngine"
    with pytest.raises(BadRequestError, match="refused the request"):  # past the server's context: its 400, passed on
        client.chat.completions.create(**{**asked, "max_tokens": 4000})


def test_structured_outputs_tool_calls_and_logprobs_through_tuneloop_from_vllm(on_vllm):
    """What `make run` serves by default, through the official client's own helpers: a pydantic
    model parsed from a guided answer, a required tool call whose arguments validate, and each
    token's log-probability. The random tiny model would write neither JSON nor a call unguided."""
    from pydantic import BaseModel

    class Colour(BaseModel):
        name: str
        warm: bool

    client = OpenAI(base_url=f"{on_vllm.url}/v1", api_key="unused")
    ask = {"model": "tuneloop", "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 48,
           "temperature": 1.0, "seed": 3}
    parsed = client.chat.completions.parse(**ask, response_format=Colour)
    assert isinstance(parsed.choices[0].message.parsed, Colour)
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
        "additionalProperties": False}}}
    called = client.chat.completions.create(**ask, tools=[weather], tool_choice="required")
    (call,) = called.choices[0].message.tool_calls
    assert called.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert set(json.loads(call.function.arguments)) == {"city"}
    scored = client.chat.completions.create(**{**ask, "max_tokens": 6}, logprobs=True, top_logprobs=2)
    tokens = scored.choices[0].logprobs.content
    assert len(tokens) == scored.usage.completion_tokens and all(len(t.top_logprobs) == 2 for t in tokens)


def test_concurrent_seeded_requests_through_tuneloop_on_vllm_all_succeed(on_vllm):
    """Many clients, each with its own `seed`, at once: enough prompt tokens that vLLM batches
    them in parts. The CPU build used to die on the first seeded request caught mid-prefill
    (serving/vllm_server.py: _cpu_args), failing all of them."""
    client = AsyncOpenAI(base_url=f"{on_vllm.url}/v1", api_key="unused")

    async def ask(i: int) -> str:
        answer = await client.chat.completions.create(
            model="tuneloop", messages=[{"role": "user", "content": f"Tell me about topic {i}. " * 20}],
            max_tokens=16, temperature=1.0, seed=i)
        return answer.choices[0].finish_reason

    async def everyone() -> list:
        return await asyncio.gather(*(ask(i) for i in range(32)), return_exceptions=True)

    finished = asyncio.run(everyone())
    assert [r for r in finished if isinstance(r, Exception)] == []
    assert set(finished) <= {"stop", "length"}


def test_an_approval_reaches_vllm_under_concurrent_streams_and_fails_none(on_vllm, vllm_model, tmp_path):
    database = on_vllm.app.state.database
    add_candidate(database, "r-vllm", make_adapter(vllm_model, tmp_path / "adapter"))
    operator = {"Authorization": f"Bearer {operator_token(database)}"}

    async def scenario():
        started = [asyncio.Event() for _ in range(8)]
        streams = [asyncio.create_task(_stream(on_vllm.url, 120, event)) for event in started]
        await asyncio.gather(*(event.wait() for event in started))
        async with httpx.AsyncClient() as http:
            approved = await http.post(f"{on_vllm.url}/api/releases/r-vllm/approve", headers=operator)
        return approved, await asyncio.gather(*streams)

    approved, finished = asyncio.run(scenario())
    assert approved.status_code == 200
    assert [last for _, last, _ in finished] == ["data: [DONE]"] * 8
    assert {release_of(database, rid) for rid, _, _ in finished} == {"base"}
    assert eventually(lambda: release_of(database, chat(on_vllm.url)) == "r-vllm", timeout=60)
    live = on_vllm.app.state.live
    served = {m["id"] for m in httpx.get(f"{on_vllm.app.state.settings.vllm_urls[0]}/v1/models").json()["data"]}
    assert live.active.adapter in served  # loaded on the vLLM server under the release's versioned name
    assert httpx.post(f"{on_vllm.url}/api/releases/rollback", headers=operator).status_code == 200
    assert eventually(lambda: release_of(database, chat(on_vllm.url)) == "base", timeout=60)


def refusals(database) -> list[AuditLog]:  # noqa: ANN001
    with Session(database) as session:
        return list(session.exec(select(AuditLog).where(AuditLog.action == "serving.refuse")))


def test_an_adapter_vllm_cannot_load_is_refused_and_the_old_release_serves(on_vllm, vllm_model, tmp_path):
    database = on_vllm.app.state.database
    adapter = make_adapter(vllm_model, tmp_path / "adapter")
    # Broken before the release recorded its checksum: the files verify, so vLLM itself must refuse them.
    (adapter / "adapter_model.safetensors").write_bytes(b"these bytes are not a safetensors file")
    add_candidate(database, "r-broken", adapter)
    operator = {"Authorization": f"Bearer {operator_token(database)}"}
    assert httpx.post(f"{on_vllm.url}/api/releases/r-broken/approve", headers=operator).status_code == 200

    assert eventually(lambda: refusals(database), timeout=120)
    [entry] = refusals(database)  # audited once, however often the reconciler tries again
    assert "not loaded on every replica" in entry.details["reason"] and entry.details["retrying"] is True
    assert release_of(database, chat(on_vllm.url)) == "base"  # the old release serves, and vLLM still answers
    vllm = on_vllm.app.state.settings.vllm_urls[0]
    assert served(vllm) == {"base"}  # the name it took before the warm-up failed is let go again


def test_a_release_a_replica_could_not_take_is_loaded_once_the_replica_is_back(vllm_settings, vllm_url, vllm_model,
                                                                              tmp_path):
    from tuneloop.app import create_app

    port = free_port()  # the second replica: down when the operator approves (nobody listens here yet)
    fleet = vllm_settings.model_copy(update={"vllm_urls": [vllm_url, f"http://127.0.0.1:{port}"]})
    with LiveServer(create_app(fleet)) as service:
        service.app.state.reconciler.retry_s = 1.0  # not the default's 30 s of waiting
        database = service.app.state.database
        add_candidate(database, "r-later", make_adapter(vllm_model, tmp_path / "adapter"))
        operator = {"Authorization": f"Bearer {operator_token(database)}"}
        assert httpx.post(f"{service.url}/api/releases/r-later/approve", headers=operator).status_code == 200
        assert eventually(lambda: refusals(database), timeout=60)
        assert release_of(database, chat(service.url)) == "base"  # none switches while one cannot take it
        with forwarding(port, vllm_url):  # the replica is up (here: its port leads to the first server)
            assert eventually(lambda: release_of(database, chat(service.url)) == "r-later", timeout=60)
        assert len(refusals(database)) == 1 and refusals(database)[0].details["retrying"] is True


@contextmanager
def forwarding(port: int, to: str) -> Iterator[None]:
    """A TCP port that forwards to the server at `to` while the block runs. Hand-written: a few
    lines of sockets stand in for a replica coming up, with no proxy to install."""
    target = urlsplit(to)

    class Pipe(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            upstream = socket.create_connection((target.hostname, target.port))
            ends = [self.request, upstream]
            threading.Thread(target=_pump, args=(upstream, self.request), daemon=True).start()
            _pump(self.request, upstream)
            for end in ends:
                end.close()

    server = socketserver.ThreadingTCPServer(("127.0.0.1", port), Pipe)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def test_a_restarted_replica_gets_the_live_adapters_again_before_it_serves(vllm_settings, vllm_model, vllm_url,
                                                                             tmp_path):
    from tuneloop.app import create_app

    log = tmp_path / "second.log"
    second = VLLMServer(VLLMServerConfig(model=str(vllm_model), dtype="float32", max_model_len=512), log_path=log)
    starter = threading.Thread(target=second.start)  # from a thread that ends at once, as a pool's may
    starter.start()
    starter.join()
    try:
        # One user chatting all through the restart: no per-user rate limit.
        fleet = vllm_settings.model_copy(update={"vllm_urls": [vllm_url, second.url], "rate_limit_chat": ""})
        with LiveServer(create_app(fleet)) as service:
            database = service.app.state.database
            add_candidate(database, "r-fleet", make_adapter(vllm_model, tmp_path / "adapter"))
            operator = {"Authorization": f"Bearer {operator_token(database)}"}
            assert httpx.post(f"{service.url}/api/releases/r-fleet/approve", headers=operator).status_code == 200
            assert eventually(lambda: release_of(database, chat(service.url)) == "r-fleet", timeout=120)
            adapter = service.app.state.live.active.adapter
            assert adapter in served(vllm_url) and adapter in served(second.url)
            assert second.restarts == 0  # the thread that started it is gone, and the server is not

            second.kill()  # it crashes; its supervisor starts it again, without runtime adapters
            answered = []
            while not (second.restarts and _healthy(second.url)):
                answered.append(release_of(database, chat(service.url)))  # raises on any failed turn
                time.sleep(0.2)
            assert answered and set(answered) == {"r-fleet"}  # the other replica answered meanwhile
            assert eventually(lambda: adapter in served(second.url), timeout=60)  # tuneloop gave it back
            for _ in range(6):  # and the replica serves again (least in flight: both take turns)
                assert release_of(database, chat(service.url)) == "r-fleet"
    finally:
        second.stop()
    after_restart = log.read_text(errors="replace").rsplit("Application startup complete", 1)[1]
    loaded = after_restart.index("POST /v1/load_lora_adapter")
    first_answer = re.search(r'POST /v1/chat/completions HTTP/1.1" 200', after_restart)
    assert first_answer and loaded < first_answer.start()  # no answer from it before it had the adapter


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def served(url: str) -> set[str]:
    return {model["id"] for model in httpx.get(f"{url}/v1/models").json()["data"]}


def test_serve_with_the_vllm_engine_and_no_url_runs_its_own_server(vllm_model, tmp_path):
    port = free_port()
    env = {**os.environ, "TUNELOOP_MODEL": str(vllm_model), "TUNELOOP_DATA_DIR": str(tmp_path / "var"),
           "TUNELOOP_PORT": str(port), "TUNELOOP_MAX_TOKENS": "6", "TUNELOOP_VLLM_MAX_MODEL_LEN": "512",
           "TUNELOOP_REVIEW_SCORING": "false", "HF_HUB_OFFLINE": "1"}
    output = open(tmp_path / "service.log", "wb")  # noqa: SIM115 - a file, not a pipe it could fill and block on
    service = subprocess.Popen([sys.executable, "-m", "tuneloop.cli", "serve", "--engine", "vllm"], env=env,
                               stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        assert eventually(lambda: _ready(url), timeout=600), _why(service, tmp_path)
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        answer = client.chat.completions.create(model="tuneloop", messages=[{"role": "user", "content": "Hi"}])
        assert answer.usage.completion_tokens <= 6 and answer.choices[0].message.content
        first = _vllm_children(service.pid)
        assert first, "no vLLM server among the service's children"
        os.kill(first[0], signal.SIGKILL)  # the vLLM server crashes ...
        down = httpx.post(f"{url}/v1/chat/completions", timeout=60,
                          json={"model": "tuneloop", "messages": [{"role": "user", "content": "Hi"}]})
        assert down.status_code == 503 and "could not answer" in down.json()["error"]["message"]  # not a 500
        assert eventually(lambda: _vllm_children(service.pid) and _answers(client), timeout=600)  # ... and is back
        second = _vllm_children(service.pid)
        assert second != first
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(service.pid, signal.SIGKILL)  # the assertion that failed above is the news, not this
            service.wait()
    # A graceful stop (uvicorn re-raises the SIGTERM it handled once it has shut down).
    assert "Application shutdown complete" in (tmp_path / "service.log").read_text()
    assert eventually(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in second), timeout=30)  # stopped too


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _answers(client: OpenAI) -> bool:
    try:
        return bool(client.chat.completions.create(model="tuneloop", messages=[{"role": "user", "content": "Hi"}]))
    except Exception:  # noqa: BLE001 - not back yet
        return False


def _vllm_children(pid: int) -> list[int]:
    """The vLLM API servers the service `pid` started."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read().decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if "vllm.entrypoints.openai.api_server" in command and parent == pid:
            found.append(int(entry))
    return found


def _why(service: subprocess.Popen, tmp_path) -> str:  # noqa: ANN001
    logs = [tmp_path / "service.log", tmp_path / "var" / "vllm.log"]
    ends = "\n".join(f"{log.name} ends: {log.read_text(errors='replace')[-1500:]}" for log in logs if log.is_file())
    return f"the service {'exited' if service.poll() is not None else 'did not become ready'}; {ends}"


def test_auto_serves_through_vllm_where_it_is_installed_and_in_process_elsewhere(settings, tmp_path):
    from tuneloop.engines import engine_kind

    auto = settings.model_copy(update={"engine": "auto"})
    assert engine_kind(auto) == "vllm"  # `make test` built .venv-vllm, as `make run` does
    assert engine_kind(auto.model_copy(update={"vllm_python": tmp_path / "no-vllm" / "python"})) == "transformers"
    assert engine_kind(auto.model_copy(update={"vllm_python": tmp_path / "none", "vllm_urls": ["http://x"]})) == "vllm"
    assert engine_kind(auto.model_copy(update={"engine": "transformers"})) == "transformers"


def generated_tokens(url: str) -> float:
    """vLLM's own count of the tokens it generated (its Prometheus metrics)."""
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("vllm:generation_tokens_total{"))


def test_a_client_that_goes_away_cancels_its_request_on_vllm(vllm_settings, vllm_url):
    from tuneloop.app import create_app

    # No output checks: they hold text back until it is checked, so the first piece a user sees
    # would come hundreds of the tiny model's tokens in, too late to tell a cancel from the end.
    unchecked = vllm_settings.model_copy(update={"plugins_disabled": ["guardrails", "rag"]})
    with LiveServer(create_app(unchecked)) as service:
        _cancel_midway(service.url, vllm_url)


def _cancel_midway(url: str, vllm: str) -> None:
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    asked = {"model": "tuneloop", "messages": [{"role": "user", "content": "Tell me a long story."}],
             "max_tokens": 450, "temperature": 1.0, "stream": True}
    before = generated_tokens(vllm)
    for _ in client.chat.completions.create(**asked):  # read to the end ...
        pass
    whole = generated_tokens(vllm) - before
    # ... it runs to its cap: the tiny random model's words are short and many, and end-of-text
    # is one token in 49,152 (the cap is what the next one would reach too)
    assert whole >= 450

    before = generated_tokens(vllm)
    stream = client.chat.completions.create(**asked)
    next(chunk for chunk in stream if chunk.choices and chunk.choices[0].delta.content)  # the answer has begun
    stream.close()  # the user closed the tab
    time.sleep(3)
    assert generated_tokens(vllm) - before < whole / 3  # vLLM stopped generating it
