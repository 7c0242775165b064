"""`bench/serving.py --engine vllm`: the in-process engine against vLLM, through tuneloop.

Both run as the real service (`tuneloop.app` under uvicorn, bench/_service.py), one after the
other on the same model and machine: the in-process transformers engine, then
`TUNELOOP_ENGINE=vllm` with the local vLLM server tuneloop starts itself. Each is asked the same
chats over the official OpenAI client, streaming, greedy, at 1, 8 and 32 at once; the figures
are generated tokens per second of wall time and the time to each answer's first token.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench._service import service
from bench._stats import percentile

SYSTEM = "You are a helpful, concise assistant."


@dataclass
class Load:
    engine: str
    concurrency: int
    seconds: float
    tokens: int
    first_tokens: list[float]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


async def _chat(client, prompt: str, max_tokens: int) -> tuple[float, int]:  # noqa: ANN001
    started = time.perf_counter()
    first, tokens = None, 0
    stream = await client.chat.completions.create(
        model="tuneloop", stream=True, stream_options={"include_usage": True}, temperature=0.0, max_tokens=max_tokens,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}])
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - started
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return first if first is not None else time.perf_counter() - started, tokens


async def _load(url: str, engine: str, prompts: list[str], concurrency: int, max_tokens: int) -> Load:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", timeout=900, max_retries=0)
    asked = [prompts[i % len(prompts)] for i in range(concurrency)]
    await asyncio.gather(*(_chat(client, p, 8) for p in asked[:4]))  # warm-up, untimed
    started = time.perf_counter()
    results = await asyncio.gather(*(_chat(client, p, max_tokens) for p in asked))
    seconds = time.perf_counter() - started
    await client.close()
    return Load(engine, concurrency, seconds, sum(t for _, t in results), [f for f, _ in results])


def compare(model: str, prompts: list[str], levels: list[int], max_tokens: int) -> list[Load]:
    model, loads = str(Path(model).resolve()), []  # the services run in their own folders
    for engine in ("transformers", "vllm"):
        with tempfile.TemporaryDirectory(prefix=f"bench-{engine}-") as folder:
            settings = {"ENGINE": engine, "MAX_TOKENS": max_tokens, "REVIEW_SCORING": "false",
                        "RATE_LIMIT_CHAT": "", "VLLM_MAX_MODEL_LEN": 2048}
            with service(Path(folder), model, settings) as url:
                for level in levels:
                    loads.append(asyncio.run(_load(url, engine, prompts, level, max_tokens)))
                    print(f"{engine} at {level}: {loads[-1].tokens_per_s:.1f} tok/s", flush=True)
    return loads


def report(loads: list[Load]) -> None:
    print(f"{'engine':<13} {'chats':>5} {'tokens':>7} {'seconds':>8} {'tok/s':>7} {'TTFT p50':>9} {'TTFT p99':>9}")
    for load in loads:
        print(f"{load.engine:<13} {load.concurrency:>5} {load.tokens:>7} {load.seconds:>8.1f} {load.tokens_per_s:>7.1f} "
              f"{percentile(load.first_tokens, 0.5):>8.2f}s {percentile(load.first_tokens, 0.99):>8.2f}s")
    by = {(load.engine, load.concurrency): load for load in loads}
    for level in sorted({load.concurrency for load in loads}):
        ours, theirs = by[("transformers", level)], by[("vllm", level)]
        print(f"at {level} chats: in-process / vLLM throughput = {ours.tokens_per_s / theirs.tokens_per_s:.2f}; "
              f"median first token {percentile(ours.first_tokens, 0.5):.2f} s against "
              f"{percentile(theirs.first_tokens, 0.5):.2f} s")
