"""A killed service loses nothing it acknowledged: the round that `tests/test_faults.py` and
`bench/faults.py` both run.

One round: the real service under uvicorn in a subprocess (the tests' tiny model), visitors
who chat through the widget API and then post ratings, A/B choices and corrections as fast as
the service takes them, each with its own Idempotency-Key; SIGKILL in the middle of that load
(no shutdown, no flush); the service started again on the same store; then every write that
got a 2xx must be there: its row under the id the answer gave, and the same request with the
same key replays the same answer.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from uuid import uuid4

import httpx

ROOT = Path(__file__).resolve().parent.parent
TABLES = {"ratings": "ratings", "comparisons": "comparisons", "corrections": "corrections"}


@dataclass
class Acknowledged:
    kind: str  # ratings, comparisons, corrections
    key: str
    token: str
    body: dict
    answer: dict


@dataclass
class Round:
    acknowledged: list[Acknowledged] = field(default_factory=list)
    refused: int = 0  # 4xx/5xx answers (none expected)
    cut_off: int = 0  # requests the kill interrupted: never acknowledged, so nothing is owed
    found: int = 0
    replayed: int = 0

    @property
    def lost(self) -> int:
        return len(self.acknowledged) - self.found


def start(data_dir: Path, model: str, database_url: str, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TUNELOOP_MODEL": model,
           "TUNELOOP_DEVICE": "cpu", "TUNELOOP_DATA_DIR": str(data_dir), "TUNELOOP_DATABASE_URL": database_url,
           "TUNELOOP_MAX_TOKENS": "4", "TUNELOOP_AB_SHARE": "1.0", "TUNELOOP_REVIEW_SCORING": "false",
           "TUNELOOP_ENGINE": "transformers"}  # the tiny model's head size is too small for vLLM's CPU kernels
    command = [sys.executable, "-m", "uvicorn", "tuneloop.app:create_app", "--factory", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning"]
    with log.open("ab") as out:
        process = subprocess.Popen(command, cwd=data_dir, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the service did not start")


async def _visitor(http: httpx.AsyncClient, turns: int) -> tuple[str, list[list[str]]]:
    token = (await http.post("/api/session")).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    pairs = []
    for _ in range(turns):
        conversation = (await http.post("/api/conversations", headers=headers)).json()["id"]
        reply = await http.post(f"/api/conversations/{conversation}/messages", json={"content": "hello"},
                                headers=headers)
        reply.raise_for_status()
        turn = (await http.get(f"/api/conversations/{conversation}", headers=headers)).json()["turns"][-1]
        pairs.append([a["response_id"] for a in sorted(turn["answers"], key=lambda a: a["index"])])
    return token, pairs


def _write(pairs: list[list[str]], draw: random.Random) -> tuple[str, dict]:
    a, b = draw.choice(pairs)
    kind = draw.choice(("ratings", "ratings", "comparisons", "corrections"))
    if kind == "ratings":
        return kind, {"response_id": draw.choice((a, b)), "thumb": draw.choice(("up", "down")),
                      "stars": draw.randint(1, 5), "comment": f"note {uuid4().hex[:8]}"}
    if kind == "comparisons":
        return kind, {"response_a_id": a, "response_b_id": b, "winner": draw.choice(("a", "b", "tie", "both_bad")),
                      "a_position": draw.randint(0, 1)}
    return kind, {"response_id": draw.choice((a, b)), "text": f"A better answer {uuid4().hex[:8]}."}


async def _load(url: str, visitors: list[tuple[str, list[list[str]]]], result: Round, stop: asyncio.Event,
                seed: int) -> None:
    async def one(token: str, pairs: list[list[str]], draw: random.Random) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            while not stop.is_set():
                kind, body = _write(pairs, draw)
                key = uuid4().hex
                headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
                try:
                    reply = await http.post(f"/api/feedback/{kind}", json=body, headers=headers)
                except httpx.HTTPError:
                    result.cut_off += 1
                    await asyncio.sleep(0.05)
                    continue
                if reply.status_code in (200, 201):
                    result.acknowledged.append(Acknowledged(kind, key, token, body, reply.json()))
                else:
                    result.refused += 1

    await asyncio.gather(*(one(token, pairs, random.Random(seed + i)) for i, (token, pairs) in enumerate(visitors)))


async def _kill_under_load(process: subprocess.Popen, url: str, visitors, result: Round, after: int,
                           seed: int) -> None:  # noqa: ANN001
    stop = asyncio.Event()
    load = asyncio.create_task(_load(url, visitors, result, stop, seed))
    while len(result.acknowledged) < after and not load.done():
        await asyncio.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # no lifespan shutdown, no flush: as a power cut would
    process.wait()
    await asyncio.sleep(0.5)  # requests in flight fail now
    stop.set()
    await load


def check(database_url: str, url: str, result: Round) -> None:
    """Every acknowledged write has its row, and its key replays the same answer."""
    from sqlalchemy import text

    from store.db import make_engine

    engine = make_engine(database_url)
    with engine.connect() as connection:
        ids = {kind: {row[0] for row in connection.execute(text(f"SELECT id FROM {table}"))}
               for kind, table in TABLES.items()}
    engine.dispose()
    result.found = sum(ack.answer["id"] in ids[ack.kind] for ack in result.acknowledged)
    with httpx.Client(base_url=url, timeout=30) as http:
        for ack in result.acknowledged:
            headers = {"Authorization": f"Bearer {ack.token}", "Idempotency-Key": ack.key}
            again = http.post(f"/api/feedback/{ack.kind}", json=ack.body, headers=headers)
            result.replayed += again.status_code in (200, 201) and again.json() == ack.answer


def kill_round(data_dir: Path, model: str, database_url: str, port: int, *, visitors: int = 6, turns: int = 3,
               after: int = 120, seed: int = 0) -> Round:
    """One SIGKILL round; returns what was acknowledged, found and replayed."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "service.log"
    url = f"http://127.0.0.1:{port}"
    process = start(data_dir, model, database_url, port, log)
    result = Round()
    try:
        async def run() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=60) as http:
                people = await asyncio.gather(*(_visitor(http, turns) for _ in range(visitors)))
            await _kill_under_load(process, url, people, result, after, seed)

        asyncio.run(run())
    finally:
        if process.poll() is None:
            process.kill()
    process = start(data_dir, model, database_url, port, log)  # the same store, started again
    try:
        check(database_url, url, result)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)
    return result
