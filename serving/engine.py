"""The engine interface: what the rest of tuneloop needs from something that generates text.

Two implementations: the in-process transformers engine (`transformers_engine.py`) and a
fleet of vLLM servers with runtime LoRA (`vllm_engine.py`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch


@dataclass(frozen=True)
class Guide:
    """What the answer must be, enforced token by token (constrained decoding): any JSON value
    that is an object (`schema` None), or JSON valid against `schema` (JSON text)."""

    schema: str | None = None


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7  # 0 means greedy
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None  # the same seed, prompt and settings give the same answer
    logprobs: int | None = None  # None: none; k: each token's log-probability and the k likeliest
    guide: Guide | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability under the model (before temperature, top-p or a guide),
    with the likeliest alternatives at that step: (token, logprob) pairs, best first."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass
class GenerationRequest:
    messages: list[dict[str, str]]  # chat messages: {"role": ..., "content": ...}
    params: SamplingParams = field(default_factory=SamplingParams)
    adapter: str | None = None  # a loaded LoRA adapter's name; None serves the base model


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None  # when asked for: one per generated token


@dataclass
class StreamEvent:
    """A piece of text as it is generated; the last event carries the finished completion."""

    text: str = ""
    completion: Completion | None = None


class EngineError(RuntimeError):
    """Generation failed inside the engine."""


class EngineRefused(EngineError):
    """The engine refused the request as given (a vLLM server's 4xx): the caller must change it."""


@runtime_checkable
class Engine(Protocol):
    model_name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]: ...

    async def load_adapter(self, name: str, path: str) -> None: ...

    async def unload_adapter(self, name: str) -> None: ...

    def adapters(self) -> set[str]: ...


async def generate(engine: Engine, request: GenerationRequest) -> Completion:
    """Run a request to the end and return only the finished completion."""
    async for event in engine.stream(request):
        if event.completion is not None:
            return event.completion
    raise EngineError("the engine ended a stream without a completion")
