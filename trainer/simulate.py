"""Simulated users: drive a running service over HTTP exactly as the web widget does.

Each user gets a session, opens conversations, asks prompts from the bundled set, and
gives feedback as a judge prefers: an A/B choice on paired turns, thumbs (when the judge
has a `rate`) on single ones. Nothing here touches the store: only the public API.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from uuid import uuid4

import httpx
from tqdm.auto import tqdm

from trainer.judges import Judge, load_judge

CONTINUE_SHARE = 0.25  # how often a user asks the next prompt in the same conversation


def load_prompts() -> list[dict]:
    text = resources.files("trainer.prompts").joinpath("prompts.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@dataclass
class Answered:
    prompt: str
    ab: bool
    answers: list[dict] = field(default_factory=list)  # {response_id, index, position, text}


class SimulatedUser:
    def __init__(self, http: httpx.AsyncClient, judge: Judge, rng: random.Random, stats: Counter):
        self.http, self.judge, self.rng, self.stats = http, judge, rng, stats
        self.headers: dict[str, str] = {}
        self.conversation: str | None = None

    async def sign_in(self) -> None:
        token = (await self._post("/api/session")).json()["token"]
        self.headers = {"Authorization": f"Bearer {token}"}

    async def event(self, prompt: str) -> None:
        """One turn and the feedback on it."""
        if self.conversation is None or self.rng.random() > CONTINUE_SHARE:
            self.conversation = (await self._post("/api/conversations")).json()["id"]
        turn = await self._chat(prompt)
        self.stats["turns"] += 1
        if turn.ab:
            await self._choose(turn)
        else:
            await self._rate(turn)

    async def _chat(self, prompt: str) -> Answered:
        turn = Answered(prompt, ab=False)
        by_id: dict[str, dict] = {}
        url = f"/api/conversations/{self.conversation}/messages"
        async with self.http.stream("POST", url, json={"content": prompt}, headers=self.headers) as reply:
            reply.raise_for_status()
            async for name, data in _sse(reply):
                if name == "turn":
                    turn.ab = data["ab"]
                    turn.answers = [{**a, "text": ""} for a in data["answers"]]
                    by_id = {a["response_id"]: a for a in turn.answers}
                elif name == "done":
                    by_id[data["response_id"]]["text"] = data["text"]
                elif name == "error":
                    raise RuntimeError(data["message"])
        return turn

    async def _choose(self, turn: Answered) -> None:
        shown = sorted(turn.answers, key=lambda a: a["position"])
        verdict = self.judge(turn.prompt, shown[0]["text"], shown[1]["text"])
        by_index = sorted(turn.answers, key=lambda a: a["index"])
        first_is_a = shown[0]["index"] == 0
        winner = "tie" if verdict == "tie" else ("a" if (verdict == "a") == first_is_a else "b")
        await self._post("/api/feedback/comparisons", json={
            "response_a_id": by_index[0]["response_id"], "response_b_id": by_index[1]["response_id"],
            "winner": winner, "a_position": by_index[0]["position"],
        })
        self.stats["comparisons"] += 1

    async def _rate(self, turn: Answered) -> None:
        rate = getattr(self.judge, "rate", None)
        thumb = rate(turn.prompt, turn.answers[0]["text"]) if rate else None
        if thumb:
            await self._post("/api/feedback/ratings", json={"response_id": turn.answers[0]["response_id"],
                                                            "thumb": thumb})
            self.stats["ratings"] += 1

    async def _post(self, path: str, **kwargs) -> httpx.Response:
        # A fresh key per action; httpx's transport retries reuse it, so nothing is stored twice.
        headers = {**self.headers, "Idempotency-Key": uuid4().hex}
        reply = await self.http.post(path, headers=headers, **kwargs)
        reply.raise_for_status()
        return reply


async def _sse(reply: httpx.Response):
    name, data = "message", []
    async for line in reply.aiter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            yield name, json.loads("\n".join(data))
            name, data = "message", []


async def run(url: str, users: int, events: int, judge: Judge, seed: int = 0, timeout: float = 600) -> Counter:
    """`events` turns spread over `users` simulated people, all of them chatting at once."""
    rng = random.Random(seed)
    prompts = [p["prompt"] for p in load_prompts()]
    stats: Counter = Counter()
    transport = httpx.AsyncHTTPTransport(retries=2)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, transport=transport) as http:
        people = [SimulatedUser(http, judge, random.Random(rng.random()), stats) for _ in range(users)]
        await asyncio.gather(*(person.sign_in() for person in people))
        queue: asyncio.Queue[str] = asyncio.Queue()
        for _ in range(events):
            queue.put_nowait(rng.choice(prompts))
        with tqdm(total=events, desc="Simulated feedback events", unit="event") as progress:

            async def work(person: SimulatedUser) -> None:
                while not queue.empty():
                    prompt = queue.get_nowait()
                    try:
                        await person.event(prompt)
                    except (httpx.HTTPError, RuntimeError) as error:
                        stats["errors"] += 1
                        progress.write(f"event failed: {error}")
                    progress.update()

            await asyncio.gather(*(work(person) for person in people))
    return stats


def main(url: str, users: int, events: int, judge: str, seed: int = 0) -> Counter:
    return asyncio.run(run(url, users, events, load_judge(judge), seed))
