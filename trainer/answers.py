"""Both releases' greedy answers to the evaluation prompts, from one engine holding both
adapters, and the cache that keeps the active release's answers between nights."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from serving.engine import GenerationRequest, SamplingParams, generate
from serving.transformers_engine import TransformersEngine

CANDIDATE, ACTIVE = "candidate", "active"
EVAL_BATCH = 32  # rows decoded together: on CPU a bigger batch is more answers per second


async def _answers(engine: TransformersEngine, prompts: Sequence[list[dict]], adapter: str | None,
                   params: SamplingParams, progress: tqdm) -> list[str]:
    async def one(messages: list[dict]) -> str:
        completion = await generate(engine, GenerationRequest(messages, params, adapter))
        progress.update()
        return completion.text

    return list(await asyncio.gather(*(one(messages) for messages in prompts)))


async def compare(model_path: str, candidate_path: str, active_path: str | None, prompts: Sequence[list[dict]],
                   max_tokens: int, device: str, cache: AnswerCache | None = None,
                   ) -> tuple[list[str], list[str], TransformersEngine]:
    """Both releases' answers, and the (closed) engine: its model still holds both adapters.
    The active release's answers come from `cache` where an earlier night already gave them."""
    engine = TransformersEngine(model_path, device=device, max_batch_size=EVAL_BATCH, batch_wait_ms=20)
    await engine.start()
    try:
        await engine.load_adapter(CANDIDATE, candidate_path)
        if active_path:
            await engine.load_adapter(ACTIVE, active_path)
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens)  # greedy: the same answers every run
        known = cache.get(prompts, max_tokens) if cache else [None] * len(prompts)
        missing = [messages for messages, answer in zip(prompts, known) if answer is None]
        with tqdm(total=len(prompts) + len(missing), desc="Answering evaluation prompts", unit="answer") as progress:
            ours, fresh = await asyncio.gather(
                _answers(engine, prompts, CANDIDATE, params, progress),
                _answers(engine, missing, ACTIVE if active_path else None, params, progress),
            )
        if cache:
            cache.put(missing, max_tokens, fresh)
        answers = iter(fresh)
        theirs = [answer if answer is not None else next(answers) for answer in known]
        return ours, theirs, engine
    finally:
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

    def _key(self, messages: list[dict], max_tokens: int) -> str:
        text = json.dumps([*self.release, messages, max_tokens], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, prompts: Sequence[list[dict]], max_tokens: int) -> list[str | None]:
        return [self.known.get(self._key(messages, max_tokens)) for messages in prompts]

    def put(self, prompts: Sequence[list[dict]], max_tokens: int, answers: Sequence[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            for messages, answer in zip(prompts, answers, strict=True):
                key = self._key(messages, max_tokens)
                self.known[key] = answer
                handle.write(json.dumps({"key": key, "answer": answer}, ensure_ascii=False) + "\n")
