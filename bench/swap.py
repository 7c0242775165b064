"""Hot swap under load: approval to the first token of the new release, and failed requests.

Each round, with `--streams` OpenAI-API streams (stream=True) running at once against the
real service (uvicorn subprocess), an operator approves a new candidate release over HTTP.
Right after the approval returns, the script sends one short streaming probe after another
until a probe's response row (found by its `X-Tuneloop-Response-Id`) names the new release;
the figure is approve request sent -> first content chunk of that probe. Every in-flight
stream and every probe must end in `data: [DONE]`, with status 200 and no in-band error.

Rounds chain releases: base -> r1 -> r2 -> ... Each candidate is a real LoRA adapter with
random weights on the served model (set-up, not timed).

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python bench/swap.py                 # embedded SmolLM2-135M
    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python bench/swap.py --model tiny    # the tests' tiny model: quick
    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python bench/swap.py --engine vllm --replicas 2   # a vLLM fleet (make vllm)

With `--engine vllm` the script starts `--replicas` vLLM servers (serving/vllm_server.py, the
way `tuneloop serve` starts its own) and the service routes to them through TUNELOOP_VLLM_URLS,
so an approval is loaded and warmed on every replica before any routes to it (two-phase), and
the figure includes that warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub, whatever the caller set
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

import httpx  # noqa: E402
from sqlmodel import Session, select  # noqa: E402

from bench._service import OUT, model_path, service  # noqa: E402
from store.db import make_engine  # noqa: E402
from store.models import AuditLog, Release, Response  # noqa: E402
from tests.adapters import add_candidate, make_adapter, operator_token  # noqa: E402

TARGET_SECONDS = 2.0
PROMPT = "Tell me a long story about a lighthouse keeper and the sea."
PROBE_PROMPT = "Say hello."


@dataclass
class Stream:
    """What the client saw of one streaming request."""

    sent: float = 0.0
    status: int | None = None
    response_id: str | None = None
    first_token: float | None = None  # first chunk with content (or, failing that, a finish_reason)
    ended: float | None = None
    done: bool = False  # saw `data: [DONE]`
    error: str | None = None  # in-band error chunk or client-side exception
    started: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def failed(self) -> bool:
        return self.status != 200 or not self.done or self.error is not None


@dataclass
class Round:
    name: str
    previous: str
    approve_status: int = 0
    approve_seconds: float = 0.0
    to_first_token: float | None = None  # approve sent -> first content chunk of the new release
    streams: list[Stream] = field(default_factory=list)
    probes: list[Stream] = field(default_factory=list)
    stream_releases: list[str | None] = field(default_factory=list)
    last_stream_end: float | None = None  # seconds after approve sent
    swapped: float | None = None  # the service's approve audit entry -> its serving.swap entry, seconds
    streaming_at_approval: int = 0

    @property
    def failed(self) -> int:
        return sum(s.failed for s in self.streams + self.probes) + (self.approve_status != 200)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="'tiny', a local model folder, or (default) the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--rounds", type=int, default=3, help="swaps: base -> r1 -> r2 -> ...")
    parser.add_argument("--streams", type=int, default=8, help="streams in flight while approving")
    parser.add_argument("--max-tokens", type=int, default=128, help="length cap of the in-flight streams")
    parser.add_argument("--probe-max-tokens", type=int, default=4, help="length cap of the probes")
    parser.add_argument("--reload-interval", type=float, default=0.5, help="TUNELOOP_RELOAD_INTERVAL, seconds")
    parser.add_argument("--batch-wait-ms", type=float, help="TUNELOOP_BATCH_WAIT_MS (default: the service's)")
    parser.add_argument("--probe-gap", type=float, default=0.0, help="pause between probes, seconds (0: back to back)")
    parser.add_argument("--timeout", type=float, default=120, help="give up on a round after this many seconds")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the service (0: torch's default)")
    parser.add_argument("--keep", action="store_true", help="keep the data dir (adapters, DB, service.log)")
    parser.add_argument("--engine", choices=["transformers", "vllm"], default="transformers",
                        help="the service's engine: in-process, or a fleet of local vLLM servers")
    parser.add_argument("--replicas", type=int, default=1, help="vLLM servers in the fleet (--engine vllm)")
    return parser.parse_args()


# ---------------------------------------------------------------- one streaming request


async def stream(http: httpx.AsyncClient, record: Stream, prompt: str, max_tokens: int) -> Stream:
    body = {"model": "tuneloop", "stream": True, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": prompt}]}
    record.sent = time.perf_counter()
    try:
        async with http.stream("POST", "/v1/chat/completions", json=body) as reply:
            record.status = reply.status_code
            record.response_id = reply.headers.get("X-Tuneloop-Response-Id")
            async for line in reply.aiter_lines():
                if line.startswith("data:"):
                    _chunk(record, line[5:].strip())
    except httpx.HTTPError as error:
        record.error = f"{type(error).__name__}: {error}"
    finally:
        record.ended = time.perf_counter()
        record.started.set()  # never leave a waiter hanging on a request that failed early
    return record


def _chunk(record: Stream, data: str) -> None:
    if data == "[DONE]":
        record.done = True
        return
    body = json.loads(data)
    if "error" in body:
        record.error = body["error"].get("message", "in-band error")
        return
    for choice in body.get("choices", []):
        if record.first_token is None and (choice.get("delta", {}).get("content") or choice.get("finish_reason")):
            record.first_token = time.perf_counter()
            record.started.set()


# ---------------------------------------------------------------- one round


def release_of(database, response_id: str | None) -> str | None:  # noqa: ANN001
    if not response_id:
        return None
    with Session(database) as session:
        response = session.get(Response, uuid.UUID(response_id.split(",")[0]))
        return session.get(Release, response.release_id).name if response and response.release_id else None


async def swap_round(base: str, database, token: str, name: str, previous: str, args: argparse.Namespace) -> Round:  # noqa: ANN001
    result = Round(name, previous)
    limits = httpx.Limits(max_connections=args.streams + 4)
    async with httpx.AsyncClient(base_url=base, timeout=args.timeout, limits=limits) as http:
        records = [Stream() for _ in range(args.streams)]
        tasks = [asyncio.create_task(stream(http, r, PROMPT, args.max_tokens)) for r in records]
        await asyncio.wait_for(asyncio.gather(*(r.started.wait() for r in records)), args.timeout)
        result.streaming_at_approval = sum(r.ended is None for r in records)

        approve_sent = time.perf_counter()
        reply = await http.post(f"/api/releases/{name}/approve", headers={"Authorization": f"Bearer {token}"})
        result.approve_status, result.approve_seconds = reply.status_code, time.perf_counter() - approve_sent

        deadline = approve_sent + args.timeout
        while reply.status_code == 200 and time.perf_counter() < deadline:
            probe = await stream(http, Stream(), PROBE_PROMPT, args.probe_max_tokens)
            result.probes.append(probe)
            served_by = await asyncio.to_thread(release_of, database, probe.response_id)
            if served_by == name and probe.first_token is not None:
                result.to_first_token = probe.first_token - approve_sent
                break
            await asyncio.sleep(args.probe_gap)
        result.streams = list(await asyncio.gather(*tasks))
    result.last_stream_end = max(r.ended for r in result.streams) - approve_sent
    result.stream_releases = [await asyncio.to_thread(release_of, database, r.response_id) for r in result.streams]
    result.swapped = await asyncio.to_thread(swap_delay, database, name)
    return result


def swap_delay(database, name: str) -> float | None:  # noqa: ANN001
    """Seconds from the approval to the replica routing to the release, as the audit log says."""
    with Session(database) as session:
        def when(action: str):  # noqa: ANN202
            query = select(AuditLog.created_at).where(AuditLog.action == action, AuditLog.target == f"release:{name}")
            return session.exec(query).first()

        approved, swapped = when("release.approve"), when("serving.swap")
    return (swapped - approved).total_seconds() if approved and swapped else None


# ---------------------------------------------------------------- report


def report(rounds: list[Round], args: argparse.Namespace, model: str) -> None:
    print(f"\n{'round':<10} {'approve':>8} {'approve->new token':>18} {'->swap':>7} {'probes':>6} {'streaming':>9} "
          f"{'streams end':>11} {'streams made by':>16} {'failed':>6}")
    for r in rounds:
        made_by = ",".join(sorted({str(x) for x in r.stream_releases}))
        first = f"{r.to_first_token:.2f} s" if r.to_first_token is not None else "never"
        swapped = f"{r.swapped:.2f}s" if r.swapped is not None else "-"
        print(f"{r.previous + '->' + r.name:<10} {r.approve_seconds * 1000:>6.0f}ms {first:>18} {swapped:>7} {len(r.probes):>6} "
              f"{r.streaming_at_approval:>5}/{len(r.streams):<3} {r.last_stream_end:>9.2f} s {made_by:>16} {r.failed:>6}")
        for s in [*r.streams, *r.probes]:
            if s.failed:
                print(f"{'':<10} failed: status {s.status}, done {s.done}, error {s.error}")
        if r.approve_status != 200:
            print(f"{'':<10} approve answered {r.approve_status}")
    times = [r.to_first_token for r in rounds if r.to_first_token is not None]
    failed = sum(r.failed for r in rounds)
    requests = sum(len(r.streams) + len(r.probes) for r in rounds)
    if times:
        median, worst = statistics.median(times), max(times)
        print(f"approve -> first token of the new release: median {median:.2f} s, max {worst:.2f} s "
              f"over {len(times)} of {len(rounds)} rounds")
    met_time = len(times) == len(rounds) and max(times) < TARGET_SECONDS
    print(f"failed requests: {failed} of {requests} (in-flight streams and probes) plus approvals")
    print(f"targets: approve -> first new-release token < {TARGET_SECONDS:g} s: {'met' if met_time else 'NOT met'}; "
          f"0 failed: {'met' if failed == 0 else 'NOT met'}")
    fleet = f"vLLM, {args.replicas} replica{'s' * (args.replicas > 1)}" if args.engine == "vllm" else "in-process"
    print(f"engine {fleet}; model {model}; reload interval {args.reload_interval:g} s; {args.streams} streams of max_tokens "
          f"{args.max_tokens}, greedy; probes of max_tokens {args.probe_max_tokens}, one at a time, "
          f"{args.probe_gap:g} s apart; service torch threads {args.threads or 'default'}; "
          f"'->swap': approval to the service routing to the new release (audit log); "
          f"'streams end': when the last in-flight stream ended, seconds after approve was sent; "
          f"{os.cpu_count()} cpus")


def main() -> None:
    args = parse_args()
    load_before = os.getloadavg()[0]
    model = model_path(args.model)
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="swap-", dir=OUT))
    # Gentle random adapters: a strong one turns the real model's answers to noise that can end at
    # once, and a round needs its 8 streams still running when the approval lands.
    adapters = [make_adapter(Path(model), tmp / f"adapter-r{i}", seed=i, alpha=4) for i in range(1, args.rounds + 1)]
    settings = {"RELOAD_INTERVAL": args.reload_interval, "ENGINE": args.engine, "RATE_LIMIT_CHAT": "",
                "REVIEW_SCORING": "false"}
    if args.batch_wait_ms is not None:
        settings["BATCH_WAIT_MS"] = args.batch_wait_ms
    rounds = []
    try:
        with fleet(args, model, tmp) as urls, service(tmp, model, {**settings, **urls}, args.threads) as base:
            database = make_engine(f"sqlite:///{tmp / 'tuneloop.db'}")
            token = operator_token(database)
            asyncio.run(_warm_up(base, args))
            previous = "base"
            for i, adapter in enumerate(adapters, start=1):
                add_candidate(database, f"r{i}", adapter)
                rounds.append(asyncio.run(swap_round(base, database, token, f"r{i}", previous, args)))
                print(f"round {i}: {previous} -> r{i} done", flush=True)
                previous = f"r{i}"
            database.dispose()
        report(rounds, args, model)
        print(f"1-min load average at start: {load_before:.2f}")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def fleet(args: argparse.Namespace, model: str, folder: Path) -> Iterator[dict]:
    """With `--engine vllm`, the replicas, started side by side; yields the service's settings for them."""
    if args.engine != "vllm":
        yield {}
        return
    from serving.vllm_server import VLLMServer, VLLMServerConfig

    config = VLLMServerConfig(model=str(Path(model).resolve()), max_model_len=2048)
    servers = [VLLMServer(replace(config, cpu_cores=cores), log_path=folder / f"vllm-{i}.log")
               for i, cores in enumerate(_cores(args.replicas))]
    try:
        with ThreadPoolExecutor(len(servers)) as pool:
            list(pool.map(lambda server: server.start(), servers))
        print(f"{len(servers)} vLLM replica(s) up: {', '.join(s.url for s in servers)}", flush=True)
        yield {"VLLM_URLS": json.dumps([server.url for server in servers])}
    finally:
        for server in servers:
            server.stop()


def _cores(replicas: int) -> list[str]:
    """Each replica its own cores where there are enough (as each GPU replica has its own GPU);
    on a GPU machine vLLM ignores this."""
    cpus = os.cpu_count() or 1
    if replicas == 1 or cpus < replicas:
        return ["nobind"] * replicas
    share = cpus // replicas
    return [f"{i * share}-{(i + 1) * share - 1}" if share > 1 else str(i) for i in range(replicas)]


async def _warm_up(base: str, args: argparse.Namespace) -> None:
    """First requests pay for lazy init; keep them out of the rounds."""
    async with httpx.AsyncClient(base_url=base, timeout=args.timeout) as http:
        await asyncio.gather(*(stream(http, Stream(), PROBE_PROMPT, 8) for _ in range(args.streams)))


if __name__ == "__main__":
    main()
