"""Serving throughput: 8 concurrent chats against the same 8 served one at a time.

Both modes run in one process, against one TransformersEngine, in one run, so the
ratio compares like with like. Generation is greedy by default so that both modes
answer the same prompts with (nearly) the same tokens; the token counts of each mode
are printed, and throughput is generated tokens per wall-clock second.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/serving.py            # embedded SmolLM2-135M
    HF_HUB_OFFLINE=1 .venv/bin/python bench/serving.py --http     # also through /v1/chat/completions
    HF_HUB_OFFLINE=1 .venv/bin/python bench/serving.py --engine vllm   # in-process against vLLM (make vllm)
    HF_HUB_OFFLINE=1 .venv/bin/python bench/serving.py --observability --rounds 3   # /metrics + JSON logs on vs off
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub, whatever the caller set
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench._service import free_port  # noqa: E402
from serving.engine import Completion, GenerationRequest, SamplingParams, generate  # noqa: E402

SYSTEM = "You are a helpful, concise assistant."
# Eight realistic chat turns that all invite an answer longer than the token cap,
# so most rows run to max_tokens in both modes and token counts stay comparable.
PROMPTS = [
    "Explain how a hash table works and why lookups are usually constant time.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "What are the main differences between TCP and UDP? Give examples of when to use each.",
    "Give me a step-by-step recipe for a simple vegetable soup.",
    "Describe the water cycle to a ten-year-old.",
    "What should I consider when choosing between renting and buying a home?",
    "Summarise the causes of the French Revolution in a few paragraphs.",
    "How do I write a good cover letter for a software engineering job?",
]


@dataclass
class Phase:
    """What one mode (sequential, concurrent, ...) produced and how long it took."""

    name: str
    seconds: float
    completions: list[Completion]
    batch_sizes: list[int]

    @property
    def tokens(self) -> int:
        return sum(c.completion_tokens for c in self.completions)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def capped(self) -> int:
        return sum(c.finish_reason == "length" for c in self.completions)

    @property
    def mean_batch(self) -> float:
        return statistics.fmean(self.batch_sizes) if self.batch_sizes else float("nan")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a local model folder (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--max-tokens", type=int, default=96, help="answer length cap for every request")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the fair default)")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0, help="engine's wait for batch company")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1, help="repeat both modes, alternating their order")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--http", action="store_true", help="also measure through POST /v1/chat/completions")
    parser.add_argument("--engine", choices=["transformers", "vllm"], default="transformers",
                        help="vllm: the in-process engine against vLLM through the service (bench/engine_compare.py)")
    parser.add_argument("--concurrency", default="1,8,32", help="with --engine vllm: chats at once, comma-separated")
    parser.add_argument("--observability", action="store_true",
                        help="throughput with /metrics and JSON logs on against off (bench/observability_compare.py)")
    return parser.parse_args()


def model_path(args: argparse.Namespace) -> str:
    if args.model:
        return args.model
    from serving.weights import resolve_model
    from tuneloop.settings import EMBEDDED_MODEL, Settings

    settings = Settings(_env_file=None)
    return resolve_model(settings.model, settings.models_dir, EMBEDDED_MODEL)


def requests(params: SamplingParams) -> list[GenerationRequest]:
    return [GenerationRequest([{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}], params)
            for p in PROMPTS]


async def timed(name: str, engine, run) -> Phase:  # noqa: ANN001
    """Run a coroutine factory and record its wall time and the batches it caused."""
    first_batch = len(engine.batch_sizes)
    started = time.perf_counter()
    completions = await run()
    seconds = time.perf_counter() - started
    return Phase(name, seconds, completions, list(engine.batch_sizes)[first_batch:])


async def sequential(engine, batch: list[GenerationRequest]) -> list[Completion]:  # noqa: ANN001
    return [await generate(engine, request) for request in batch]


async def concurrent(engine, batch: list[GenerationRequest]) -> list[Completion]:  # noqa: ANN001
    return list(await asyncio.gather(*(generate(engine, request) for request in batch)))


async def warm_up(engine, batch: list[GenerationRequest]) -> None:  # noqa: ANN001
    """First calls pay for allocator growth and lazy init; keep them out of the timings."""
    short = [GenerationRequest(r.messages, SamplingParams(temperature=0.0, max_tokens=16)) for r in batch]
    await generate(engine, short[0])
    await asyncio.gather(*(generate(engine, r) for r in short))


# ---------------------------------------------------------------- optional HTTP mode


async def http_phases(engine, path: str, args: argparse.Namespace) -> list[Phase]:  # noqa: ANN001
    """The same comparison through the real app under uvicorn, in this event loop.

    The engine is shared: the app's lifespan starts it again and closes it at the end.
    """
    import httpx
    import uvicorn

    from tuneloop.app import create_app
    from tuneloop.settings import Settings

    data_dir = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    settings = Settings(_env_file=None, data_dir=data_dir, model=path, device="cpu")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, engine=engine), port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
            post = _poster(client, args)
            await asyncio.gather(*(post(p) for p in PROMPTS))  # warm-up of the HTTP path
            seq = await timed("http sequential", engine, lambda: _each(post))
            conc = await timed("http concurrent", engine, lambda: _all(post))
        return [seq, conc]
    finally:
        server.should_exit = True
        await task


def _poster(client, args: argparse.Namespace):  # noqa: ANN001, ANN202
    async def post(prompt: str) -> Completion:
        body = {"model": "tuneloop", "temperature": args.temperature, "max_tokens": args.max_tokens,
                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]}
        reply = await client.post("/v1/chat/completions", json=body)
        reply.raise_for_status()
        data = reply.json()
        choice, usage = data["choices"][0], data["usage"]
        return Completion(choice["message"]["content"], choice["finish_reason"],
                          usage["prompt_tokens"], usage["completion_tokens"])

    return post


async def _each(post) -> list[Completion]:  # noqa: ANN001
    return [await post(p) for p in PROMPTS]


async def _all(post) -> list[Completion]:  # noqa: ANN001
    return list(await asyncio.gather(*(post(p) for p in PROMPTS)))


# ---------------------------------------------------------------- report


def report(phases: list[Phase]) -> None:
    print(f"{'mode':<18} {'requests':>8} {'tokens':>7} {'capped':>6} {'seconds':>8} {'tok/s':>8} {'mean batch':>10}")
    for p in phases:
        print(f"{p.name:<18} {len(p.completions):>8} {p.tokens:>7} {p.capped:>6} {p.seconds:>8.2f} "
              f"{p.tokens_per_s:>8.1f} {p.mean_batch:>10.2f}")


def ratio_line(label: str, seq: list[Phase], conc: list[Phase], target: float | None) -> None:
    """Ratio of summed tokens over summed time across rounds; and the target verdict."""
    seq_rate = sum(p.tokens for p in seq) / sum(p.seconds for p in seq)
    conc_rate = sum(p.tokens for p in conc) / sum(p.seconds for p in conc)
    ratio = conc_rate / seq_rate
    verdict = "" if target is None else f"  (target >= {target:g}x: {'met' if ratio >= target else 'NOT met'})"
    print(f"{label}: concurrent {conc_rate:.1f} tok/s / sequential {seq_rate:.1f} tok/s = {ratio:.2f}x{verdict}")


async def main() -> None:
    args = parse_args()
    if args.observability:
        from bench import observability_compare

        await asyncio.to_thread(observability_compare.compare, model_path(args), PROMPTS, max(2, args.rounds * 2),
                                args.max_tokens)
        return
    if args.engine == "vllm":
        from bench import engine_compare

        levels = [int(level) for level in args.concurrency.split(",")]
        engine_compare.report(await asyncio.to_thread(engine_compare.compare, model_path(args), PROMPTS, levels,
                                                      args.max_tokens))
        return
    import torch

    from serving.transformers_engine import TransformersEngine

    if args.threads:
        torch.set_num_threads(args.threads)
    path = model_path(args)
    engine = TransformersEngine(path, device="cpu", max_batch_size=args.max_batch_size,
                                batch_wait_ms=args.batch_wait_ms)
    await engine.start()
    batch = requests(SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens))
    print(f"model {path}; {len(batch)} prompts; max_tokens {args.max_tokens}; temperature {args.temperature}; "
          f"torch threads {torch.get_num_threads()}; cpus {os.cpu_count()}")
    await warm_up(engine, batch)
    seq, conc = [], []
    for round_ in range(args.rounds):
        # Alternate which mode goes first so drift (thermal, caches) does not favour one.
        order = [("sequential", sequential, seq), ("concurrent", concurrent, conc)]
        for name, run, into in order if round_ % 2 == 0 else order[::-1]:
            into.append(await timed(name, engine, lambda run=run: run(engine, batch)))
    report(seq + conc)
    ratio_line("engine", seq, conc, target=3.0)
    await engine.close()
    if args.http:
        http = await http_phases(engine, path, args)
        report(http)
        ratio_line("http", http[:1], http[1:], target=None)


if __name__ == "__main__":
    asyncio.run(main())
