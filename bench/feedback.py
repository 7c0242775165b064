"""Feedback write path: ratings per second and latency through the real HTTP API.

For each database (SQLite file, PostgreSQL schema) this script
  1. sets up one user with a token, a conversation, a prompt and N+W responses (not timed),
  2. starts the real app under uvicorn in a subprocess (its own GIL, as in production),
  3. rates W responses to warm up, then N more, each distinct, with `concurrency` requests
     in flight over keep-alive connections and a unique Idempotency-Key per request,
  4. counts the stored ratings and compares them with the acknowledged (201) ones.

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python bench/feedback.py
    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python bench/feedback.py --databases sqlite -n 2000 --workers 2

The load generator runs on the same 2 cores as the server, so the script also prints how
much CPU each side used: when the client's share is large, the figure is a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub, whatever the caller set
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from sqlalchemy import func, text  # noqa: E402
from sqlmodel import Session, select  # noqa: E402

from bench._service import free_port, wait_healthy  # noqa: E402
from bench._stats import percentile  # noqa: E402
from store import conversations, users  # noqa: E402
from store.db import make_engine  # noqa: E402
from store.migrate import upgrade  # noqa: E402
from store.models import Channel, MessageRole, Rating, Response  # noqa: E402

POSTGRES_URL = os.environ.get("TUNELOOP_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
TARGET_RATE, TARGET_P99_MS = 500.0, 100.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Fixture:
    url: str
    token: str
    user_id: int
    response_ids: list[uuid.UUID]


@dataclass
class Load:
    """What the client saw: one latency per request, and the answers' status codes."""

    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0

    @property
    def acknowledged(self) -> int:
        return self.statuses.get(201, 0)

    def percentile(self, share: float) -> float:
        return percentile(self.latencies_ms, share)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--ratings", type=int, default=5000, help="timed ratings per database")
    parser.add_argument("--warmup", type=int, default=300, help="untimed ratings first (JIT-free, but pools fill)")
    parser.add_argument("-c", "--concurrency", type=int, default=32, help="requests in flight")
    parser.add_argument("--databases", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--postgres-url", default=POSTGRES_URL)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (1 = as `tuneloop serve`)")
    parser.add_argument("--access-log", action="store_true", help="keep uvicorn's access log on (off by default)")
    parser.add_argument("--profile", metavar="DIR", help="record the server with py-spy into DIR/<db>.txt (collapsed stacks)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and PostgreSQL schema")
    return parser.parse_args()


# ---------------------------------------------------------------- databases


@contextmanager
def database(kind: str, args: argparse.Namespace, tmp: Path):
    """A fresh, empty store URL: a SQLite file, or a PostgreSQL schema dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'bench.db'}"
        return
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = make_engine(args.postgres_url)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{args.postgres_url}?options=-csearch_path%3D{schema}"
    finally:
        if not args.keep:
            with admin.begin() as connection:
                connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def set_up(url: str, responses: int) -> Fixture:
    """Everything the ratings point at, written directly (set-up, not timed)."""
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine, expire_on_commit=False) as session:
        user = users.get_or_create_user(session, external_id="bench:rater", name="bench rater")
        token = users.issue_token(session, user=user)
        conversation = conversations.create_conversation(session, user=user, channel=Channel.api)
        prompt = conversations.add_message(session, conversation_id=conversation.id, role=MessageRole.user,
                                           content="How do I bake bread?")
        ids = [uuid.uuid4() for _ in range(responses)]
        session.add_all(Response(id=i, conversation_id=conversation.id, prompt_message_id=prompt.id,
                                 text="Mix flour, water, salt and yeast; knead, rise, bake.") for i in ids)
        session.commit()
        fixture = Fixture(url, token, user.id, ids)
    engine.dispose()
    return fixture


def stored_ratings(fixture: Fixture) -> tuple[int, int]:
    """(rows, distinct responses) rated by the bench user."""
    engine = make_engine(fixture.url)
    with Session(engine) as session:
        query = select(func.count(), func.count(Rating.response_id.distinct())).where(Rating.user_id == fixture.user_id)
        rows, distinct = session.exec(query).one()
    engine.dispose()
    return rows, distinct


# ---------------------------------------------------------------- the server


@contextmanager
def server(url: str, tmp: Path, args: argparse.Namespace):
    """The real app (`tuneloop.app:create_app`, settings from TUNELOOP_*) under uvicorn."""
    from tests.models import tiny_model_dir  # the tiny model keeps start-up fast; ratings never use it

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TUNELOOP_DATABASE_URL": url,
           "TUNELOOP_MODEL": str(tiny_model_dir()), "TUNELOOP_DEVICE": "cpu", "TUNELOOP_DATA_DIR": str(tmp),
           "TUNELOOP_PORT": str(port), "TUNELOOP_ENGINE": "transformers"}  # the feedback API is measured, not generation
    command = [sys.executable, "-m", "uvicorn", "tuneloop.app:create_app", "--factory", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning", "--workers", str(args.workers)]
    if not args.access_log:
        command.append("--no-access-log")  # a log line per request is overhead that `tuneloop serve` has
    log_path = tmp / "service.log"
    with log_path.open("w") as log:  # cwd=tmp: no stray .env is read
        process = subprocess.Popen(command, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process, log_path, timeout=120)
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.send_signal(signal.SIGINT)  # graceful: the lifespan closes the engine and pool
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process and its children (uvicorn workers), from /proc."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if entry.name == str(pid) or fields[1] == str(pid):  # fields[1] is the parent pid
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


@contextmanager
def profiler(pid: int, kind: str, folder: str | None):
    """py-spy on the server during the timed run: what holds the GIL (it costs some rate)."""
    if not folder:
        yield
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    out = Path(folder) / f"{kind}.txt"
    spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--subprocesses",
                            "--format", "raw", "--rate", "200", "--gil", "--nonblocking", "--output", str(out)], stdout=subprocess.DEVNULL)
    time.sleep(1)  # let it attach before the load starts
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        spy.wait(60)


# ---------------------------------------------------------------- the load


def bodies(ids: list[uuid.UUID]) -> list[bytes]:
    """Pre-serialised bodies so the client spends no time on JSON while timing."""
    out = []
    for i, response_id in enumerate(ids):
        body = {"response_id": str(response_id), "thumb": "up"} if i % 2 else \
            {"response_id": str(response_id), "thumb": "down", "reason": "unhelpful"}
        out.append(json.dumps(body).encode())
    return out


async def fire(base: str, token: str, payloads: list[bytes], concurrency: int, server_pid: int) -> Load:
    """`concurrency` workers share one keep-alive pool and take payloads from one iterator."""
    import aiohttp

    load, queue = Load(), iter(payloads)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(base, connector=connector, headers=headers) as client:

        async def worker() -> None:
            for payload in queue:
                started = time.perf_counter()
                async with client.post("/api/feedback/ratings", data=payload,
                                       headers={"Idempotency-Key": uuid.uuid4().hex}) as reply:
                    await reply.read()
                load.latencies_ms.append((time.perf_counter() - started) * 1000)
                load.statuses[reply.status] = load.statuses.get(reply.status, 0) + 1

        cpu_client, cpu_server = time.process_time(), cpu_seconds(server_pid)
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        load.seconds = time.perf_counter() - started
        load.client_cpu_s = time.process_time() - cpu_client
        load.server_cpu_s = cpu_seconds(server_pid) - cpu_server
    return load


# ---------------------------------------------------------------- one database, and the report


def run_one(kind: str, args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-feedback-{kind}-"))
    try:
        with database(kind, args, tmp) as url:
            fixture = set_up(url, args.warmup + args.ratings)
            payloads = bodies(fixture.response_ids)
            with server(url, tmp, args) as (base, pid):
                warm = asyncio.run(fire(base, fixture.token, payloads[: args.warmup], args.concurrency, pid))
                with profiler(pid, kind, args.profile):
                    load = asyncio.run(fire(base, fixture.token, payloads[args.warmup :], args.concurrency, pid))
            rows, distinct = stored_ratings(fixture)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    acknowledged = warm.acknowledged + load.acknowledged
    return {"db": kind, "load": load, "acked": acknowledged, "stored": rows, "distinct": distinct,
            "lost": acknowledged - rows}


def report(results: list[dict], args: argparse.Namespace, load_before: float) -> None:
    print(f"\n{'db':<11} {'ratings':>7} {'conc':>4} {'rate/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'non-201':>7} "
          f"{'acked':>6} {'stored':>6} {'lost':>4} {'srv cpu':>7} {'cli cpu':>7}  targets")
    for r in results:
        load: Load = r["load"]
        rate, p99 = len(load.latencies_ms) / load.seconds, load.percentile(0.99)
        met = "met" if rate >= TARGET_RATE and p99 < TARGET_P99_MS and r["lost"] == 0 else "NOT met"
        print(f"{r['db']:<11} {len(load.latencies_ms):>7} {args.concurrency:>4} {rate:>8.1f} "
              f"{load.percentile(0.5):>7.1f} {p99:>7.1f} {len(load.latencies_ms) - load.acknowledged:>7} "
              f"{r['acked']:>6} {r['stored']:>6} {r['lost']:>4} {load.server_cpu_s / load.seconds:>6.0%} "
              f"{load.client_cpu_s / load.seconds:>6.0%}  {met}")
        if load.statuses.keys() - {201}:
            print(f"{'':<11} status codes: {dict(sorted(load.statuses.items()))}")
        if r["distinct"] != r["stored"]:
            print(f"{'':<11} WARNING: {r['stored']} rows for {r['distinct']} distinct responses")
    print(f"targets: >= {TARGET_RATE:g} ratings/s, p99 < {TARGET_P99_MS:g} ms, 0 lost. "
          f"cpu columns: share of one core over the timed run ({os.cpu_count()} cores, "
          f"1-min load average at start: {load_before:.2f}); client and server share these cores, "
          f"so a high client share means the rate is a floor.")


def main() -> None:
    args = parse_args()
    load_before = os.getloadavg()[0]  # other work on this machine skews every figure; say how much
    print(f"uvicorn workers {args.workers}; {args.warmup} warm-up + {args.ratings} timed ratings per database")
    results = [run_one(kind.strip(), args) for kind in args.databases.split(",") if kind.strip()]
    report(results, args, load_before)


if __name__ == "__main__":
    main()
