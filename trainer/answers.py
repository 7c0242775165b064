"""Both releases' greedy answers to the evaluation prompts, from one engine holding both
adapters, and the cache that keeps the active release's answers between nights.

The engine is the in-process transformers one unless the deployment gives another
(`Environment.answer_engine`: the vLLM fleet, or a local vLLM server, where serving runs on
vLLM). Adapters are loaded under names of their own, so a fleet that also serves users never
confuses an evaluation's candidate with a release.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from serving.engine import Completion, Engine, GenerationRequest, SamplingParams, generate
from serving.transformers_engine import TransformersEngine

log = logging.getLogger("tuneloop.trainer")
EVAL_BATCH = 32  # rows decoded together in-process: on CPU a bigger batch is more answers per second
# Requests one night keeps open at once. A server queues the rest; a queued stream that sends
# nothing for the client's read timeout (120 s) fails, and a CPU vLLM server sent all 192 of a
# night's distill answers at once timed them out. 64 keep a CPU server's batch full.
IN_FLIGHT = 64
EngineFactory = Callable[[], Engine]


def in_process(model_path: str, device: str) -> EngineFactory:
    return lambda: TransformersEngine(model_path, device=device, max_batch_size=EVAL_BATCH, batch_wait_ms=20)


def describe(engine: Engine) -> str:
    """Which engine answered, for the report."""
    replicas = getattr(engine, "replicas", None)
    if replicas is not None:
        return "vLLM at " + ", ".join(replica.url for replica in replicas)
    return f"in-process {type(engine).__name__}"


async def _completions(engine: Engine, prompts: Sequence[list[dict]], adapter: str | None,
                       params: SamplingParams, progress: tqdm, slots: asyncio.Semaphore) -> list[Completion]:
    async def one(messages: list[dict]) -> Completion:
        async with slots:
            completion = await generate(engine, GenerationRequest(messages, params, adapter))
        progress.update()
        return completion

    return list(await asyncio.gather(*(one(messages) for messages in prompts)))


async def _answers(engine: Engine, prompts: Sequence[list[dict]], adapter: str | None,
                   params: SamplingParams, progress: tqdm, slots: asyncio.Semaphore) -> list[str]:
    return [completion.text for completion in await _completions(engine, prompts, adapter, params, progress, slots)]


async def sample(factory: EngineFactory, fallback: EngineFactory, adapter_path: str | None,
                 prompts: Sequence[list[dict]], params: SamplingParams, desc: str) -> list[Completion]:
    """One release's answers (the base model's where `adapter_path` is None) to `prompts`,
    through `factory`'s engine, or `fallback`'s where that cannot start or load the adapter."""
    async def on(engine: Engine) -> list[Completion]:
        name = f"sample-{uuid.uuid4().hex[:8]}" if adapter_path else None
        try:
            await engine.start()
            if name:
                await engine.load_adapter(name, adapter_path)
            with tqdm(total=len(prompts), desc=desc, unit="answer") as progress:
                return await _completions(engine, prompts, name, params, progress, asyncio.Semaphore(IN_FLIGHT))
        finally:
            if name and name in engine.adapters():
                await engine.unload_adapter(name)
            await engine.close()

    return await _or_in_process(factory, fallback, on, "sampling")


async def compare(factory: EngineFactory, fallback: EngineFactory, candidate_path: str, active_path: str | None,
                  prompts: Sequence[list[dict]], max_tokens: int, cache: AnswerCache | None = None,
                  active_prompts: Sequence[list[dict]] | None = None) -> tuple[list[str], list[str], str]:
    """Both releases' answers, and which engine gave them: the candidate's to `prompts`, the
    active release's to `active_prompts` (the same conversations as that release reads them,
    under its own instruction; default `prompts`). The active release's answers come from
    `cache` where an earlier night already gave them. Where `factory`'s engine cannot start or
    load the adapters, `fallback`'s answers: an evaluation that cannot reach vLLM is slower,
    not lost, and the report says which engine answered."""
    async def on(engine: Engine) -> tuple[list[str], list[str], str]:
        return await _compare_on(engine, candidate_path, active_path, prompts, active_prompts or prompts,
                                 max_tokens, cache)

    return await _or_in_process(factory, fallback, on, "evaluation")


async def _or_in_process(factory: EngineFactory, fallback: EngineFactory, work, what: str):  # noqa: ANN001, ANN202
    """`work(engine)` on `factory`'s engine; where that cannot start or load an adapter, on
    `fallback`'s (in-process): the night is slower, not lost."""
    engine = factory()
    try:
        return await work(engine)
    except Exception as error:
        if factory is fallback:
            raise
        log.warning("%s could not generate through %s (%s): answering in-process", what, describe(engine), error)
    return await work(fallback())


async def _compare_on(engine: Engine, candidate_path: str, active_path: str | None, prompts: Sequence[list[dict]],
                      active_prompts: Sequence[list[dict]], max_tokens: int, cache: AnswerCache | None,
                      ) -> tuple[list[str], list[str], str]:
    run = uuid.uuid4().hex[:8]
    candidate, active = f"eval-{run}-candidate", f"eval-{run}-active" if active_path else None
    try:
        await engine.start()
        await engine.load_adapter(candidate, candidate_path)
        if active:
            await engine.load_adapter(active, active_path)
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens)  # greedy: the same answers every run
        kind = type(engine).__name__  # engines' greedy answers differ in their last digits: cached apart
        known = cache.get(active_prompts, max_tokens, kind) if cache else [None] * len(active_prompts)
        missing = [messages for messages, answer in zip(active_prompts, known) if answer is None]
        slots = asyncio.Semaphore(IN_FLIGHT)  # shared: both releases' answers count against one limit
        with tqdm(total=len(prompts) + len(missing), desc="Answering evaluation prompts", unit="answer") as progress:
            ours, fresh = await asyncio.gather(
                _answers(engine, prompts, candidate, params, progress, slots),
                _answers(engine, missing, active, params, progress, slots),
            )
        if cache:
            cache.put(missing, max_tokens, kind, fresh)
        answers = iter(fresh)
        theirs = [answer if answer is not None else next(answers) for answer in known]
        return ours, theirs, describe(engine)
    finally:
        for name in (candidate, active):
            if name in engine.adapters():
                await engine.unload_adapter(name)  # a fleet that serves users keeps no evaluation's adapters
        await engine.close()


class AnswerCache:
    """The active release's greedy answers, kept between nights: they are the same every time
    the same release answers the same prompt with the same cap, so a night against an active
    release that earlier nights already evaluated answers only its new prompts."""

    def __init__(self, folder: Path, model_path: str, active_path: str | None):
        from store.artifacts import directory_checksum

        self.path = Path(folder) / "active-answers.jsonl"
        self.release = [str(model_path), directory_checksum(Path(active_path)) if active_path else None]
        self.known: dict[str, str] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                entry = json.loads(line)
                self.known[entry["key"]] = entry["answer"]

    def _key(self, messages: list[dict], max_tokens: int, engine: str) -> str:
        # The in-process engine's key is the one earlier versions wrote, so their caches still count.
        engine_part = [] if engine == "TransformersEngine" else [engine]
        text = json.dumps([*self.release, messages, max_tokens, *engine_part], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, prompts: Sequence[list[dict]], max_tokens: int, engine: str) -> list[str | None]:
        return [self.known.get(self._key(messages, max_tokens, engine)) for messages in prompts]

    def put(self, prompts: Sequence[list[dict]], max_tokens: int, engine: str, answers: Sequence[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            for messages, answer in zip(prompts, answers, strict=True):
                key = self._key(messages, max_tokens, engine)
                self.known[key] = answer
                handle.write(json.dumps({"key": key, "answer": answer}, ensure_ascii=False) + "\n")
