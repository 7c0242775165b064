"""Candidate against the active release: answers to held-out prompts, judged side by side."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from tqdm.auto import tqdm

from feedback.stats import wilson
from serving.engine import GenerationRequest, SamplingParams, generate
from serving.transformers_engine import TransformersEngine
from trainer.judges import Judge

CANDIDATE, ACTIVE = "candidate", "active"


@dataclass
class WinRate:
    wins: int
    ties: int
    losses: int
    low: float
    high: float
    judge: str
    examples: list[dict] = field(default_factory=list)

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    @property
    def rate(self) -> float:
        return (self.wins + 0.5 * self.ties) / self.n if self.n else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "n": self.n, "rate": self.rate}


async def _answers(engine: TransformersEngine, prompts: Sequence[list[dict]], adapter: str | None,
                   params: SamplingParams, progress: tqdm) -> list[str]:
    async def one(messages: list[dict]) -> str:
        completion = await generate(engine, GenerationRequest(messages, params, adapter))
        progress.update()
        return completion.text

    return list(await asyncio.gather(*(one(messages) for messages in prompts)))


async def _compare(model_path: str, candidate_path: str, active_path: str | None, prompts: Sequence[list[dict]],
                   max_tokens: int, device: str) -> tuple[list[str], list[str]]:
    engine = TransformersEngine(model_path, device=device, max_batch_size=16, batch_wait_ms=20)
    await engine.start()
    try:
        await engine.load_adapter(CANDIDATE, candidate_path)
        if active_path:
            await engine.load_adapter(ACTIVE, active_path)
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens)  # greedy: the same answers every run
        with tqdm(total=2 * len(prompts), desc="Answering held-out prompts", unit="answer") as progress:
            ours, theirs = await asyncio.gather(
                _answers(engine, prompts, CANDIDATE, params, progress),
                _answers(engine, prompts, ACTIVE if active_path else None, params, progress),
            )
        return ours, theirs
    finally:
        await engine.close()


def win_rate(model_path: str, candidate_path: str, active_path: str | None, prompts: Sequence[list[dict]],
             judge: Judge, judge_name: str, *, max_tokens: int, seed: int = 0, device: str = "auto") -> WinRate:
    """How often the judge prefers the candidate's answer; each pair is shown in random order."""
    ours, theirs = asyncio.run(_compare(model_path, candidate_path, active_path, prompts, max_tokens, device))
    order = random.Random(seed)
    wins = ties = losses = 0
    examples = []
    for messages, candidate, active in zip(prompts, ours, theirs):
        prompt = messages[-1]["content"]
        swapped = order.random() < 0.5
        verdict = judge(prompt, active, candidate) if swapped else judge(prompt, candidate, active)
        if verdict == "tie":
            ties += 1
        elif (verdict == "a") != swapped:
            wins += 1
        else:
            losses += 1
        if len(examples) < 5:
            examples.append({"prompt": prompt, "candidate": candidate, "active": active, "verdict": verdict,
                             "candidate_shown": "b" if swapped else "a"})
    low, high = wilson(wins + 0.5 * ties, wins + ties + losses)
    return WinRate(wins, ties, losses, low, high, judge_name, examples)
