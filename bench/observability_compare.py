"""`bench/serving.py --observability`: what /metrics and JSON logs cost in throughput.

Two services side by side on the same model (bench/_service.py, uvicorn subprocesses, started
once each): one with `TUNELOOP_METRICS=false` and text logs, one with metrics on, JSON logs and
Prometheus scraping /metrics every second (fifteen times as often as the compose profile's). They
are asked the same 8 concurrent streaming chats (official OpenAI client, greedy) in alternating
rounds, so drift in the machine's load falls on both; the figure is generated tokens per second
of wall time, summed over the rounds.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
from contextlib import ExitStack
from pathlib import Path

import httpx

from bench._service import service
from bench.engine_compare import _load

SETTINGS = {"ENGINE": "transformers", "REVIEW_SCORING": "false", "RATE_LIMIT_CHAT": ""}
MODES = {"off": {"METRICS": "false", "LOG_FORMAT": "text"}, "on": {"METRICS": "true", "LOG_FORMAT": "json"}}


class Scraper(threading.Thread):
    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.halt, self.scrapes = url, threading.Event(), 0

    def run(self) -> None:
        while not self.halt.wait(1.0):
            if httpx.get(f"{self.url}/metrics", timeout=30).status_code == 200:
                self.scrapes += 1


def compare(model: str, prompts: list[str], rounds: int, max_tokens: int) -> None:
    model = str(Path(model).resolve())
    with ExitStack() as stack:
        urls = {}
        for mode, extra in MODES.items():
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"bench-obs-{mode}-")))
            urls[mode] = stack.enter_context(service(folder, model, {**SETTINGS, "MAX_TOKENS": max_tokens, **extra}))
        scraper = Scraper(urls["on"])
        scraper.start()
        totals = {mode: [0, 0.0] for mode in MODES}
        for turn in range(rounds):
            for mode in (("off", "on") if turn % 2 == 0 else ("on", "off")):
                load = asyncio.run(_load(urls[mode], mode, prompts, 8, max_tokens))
                totals[mode][0] += load.tokens
                totals[mode][1] += load.seconds
                print(f"round {turn + 1} {mode}: {load.tokens_per_s:.1f} tok/s", flush=True)
        scraper.halt.set()
    rate = {mode: tokens / seconds for mode, (tokens, seconds) in totals.items()}
    overhead = 1 - rate["on"] / rate["off"]
    print(f"\nmetrics and JSON logs off: {rate['off']:.1f} tok/s; on (with {scraper.scrapes} scrapes): "
          f"{rate['on']:.1f} tok/s; overhead {overhead:.1%} (target < 3%) over {rounds} rounds of 8 chats, "
          f"{max_tokens} tokens, greedy")
