"""How a night asks an engine for many answers: never more at once than a server can start on."""

from __future__ import annotations

import asyncio

from serving.engine import SamplingParams
from tests.engines import ScriptedEngine
from trainer import answers


class Crowded(ScriptedEngine):
    """Counts the answers being generated at once; each takes a little while, as a server's do."""

    def __init__(self) -> None:
        super().__init__("An answer.")
        self.open = self.most = 0

    async def stream(self, request):
        self.open += 1
        self.most = max(self.most, self.open)
        await asyncio.sleep(0.01)  # generating
        self.open -= 1
        async for event in super().stream(request):
            yield event


def test_a_night_keeps_a_bounded_number_of_requests_open_and_gets_every_answer():
    engine = Crowded()
    prompts = [[{"role": "user", "content": f"question {i}"}] for i in range(3 * answers.IN_FLIGHT)]
    done = asyncio.run(answers.sample(lambda: engine, lambda: engine, None, prompts, SamplingParams(), "answering"))
    assert len(done) == len(prompts) and all(c.text == "An answer." for c in done)
    assert engine.most == answers.IN_FLIGHT  # the queue is the caller's, not the server's read timeout's
    assert [r.messages[-1]["content"] for r in engine.requests] == [p[-1]["content"] for p in prompts]
