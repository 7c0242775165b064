"""An engine that answers with set text, word by word, for tests whose point is a specific
answer (a card number the guardrails must catch) rather than the model that wrote it."""

from __future__ import annotations

from collections.abc import AsyncIterator

from serving.engine import Completion, GenerationRequest, StreamEvent


class ScriptedEngine:
    model_name = "scripted"

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.requests: list[GenerationRequest] = []

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        self.requests.append(request)
        words = self.answer.split(" ")
        for n, word in enumerate(words):
            yield StreamEvent(word if n == 0 else " " + word)
        yield StreamEvent(completion=Completion(self.answer, "stop", 10, len(words)))

    async def load_adapter(self, name: str, path: str) -> None:
        raise NotImplementedError("a scripted engine has no adapters")

    async def unload_adapter(self, name: str) -> None:
        pass

    def adapters(self) -> set[str]:
        return set()
