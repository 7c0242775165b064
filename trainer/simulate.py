"""Simulated users: drive a running service over HTTP exactly as the web widget does.

Each user gets a session, opens conversations, asks prompts from the bundled set, and
gives feedback as a judge prefers: an A/B choice on paired turns (a winner, a tie, or "both
bad"), and on single ones whatever the judge's `rate` gives (thumbs, with a reason, stars).
Nothing here touches the store: only the public API.

Prompts are dealt from the bundled set in shuffled rounds, as a crowd of people rarely asks
one question twice word for word, so a night's held-out prompts are mostly new ones.
`run(..., judge=None)` only chats and returns what was said (`Transcript`); `give_feedback`
then judges that transcript through the same API, so one round of answers can be judged by
several simulated crowds (bench/learning.py).
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
    user: int = 0  # which simulated user asked (an index into Transcript.tokens)


@dataclass
class Transcript:
    """What was said, without feedback: the users' tokens and every answered turn, in order."""

    tokens: list[str] = field(default_factory=list)
    turns: list[Answered] = field(default_factory=list)


class SimulatedUser:
    def __init__(self, http: httpx.AsyncClient, judge: Judge | None, rng: random.Random, stats: Counter,
                 index: int = 0):
        self.http, self.judge, self.rng, self.stats, self.index = http, judge, rng, stats, index
        self.headers: dict[str, str] = {}
        self.token = ""
        self.conversation: str | None = None

    async def sign_in(self, token: str | None = None) -> None:
        self.token = token or (await self._post("/api/session")).json()["token"]
        self.headers = {"Authorization": f"Bearer {self.token}"}

    async def event(self, prompt: str) -> Answered:
        """One turn and, when the user has a judge, the feedback on it."""
        if self.conversation is None or self.rng.random() > CONTINUE_SHARE:
            self.conversation = (await self._post("/api/conversations")).json()["id"]
        turn = await self._chat(prompt)
        turn.user = self.index
        self.stats["turns"] += 1
        if self.judge is not None:
            await self.give_feedback(turn)
        return turn

    async def give_feedback(self, turn: Answered) -> None:
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
        if verdict in ("a", "b"):
            winner = "a" if (verdict == "a") == first_is_a else "b"
        else:
            winner = "both_bad" if verdict == "both_bad" else "tie"
        await self._post("/api/feedback/comparisons", json={
            "response_a_id": by_index[0]["response_id"], "response_b_id": by_index[1]["response_id"],
            "winner": winner, "a_position": by_index[0]["position"],
        })
        self.stats["comparisons"] += 1
        self.stats[f"choices_{winner}"] += 1

    async def _rate(self, turn: Answered) -> None:
        rate = getattr(self.judge, "rate", None)
        rating = rating_body(rate(turn.prompt, turn.answers[0]["text"])) if rate else None
        if rating:
            await self._post("/api/feedback/ratings", json={"response_id": turn.answers[0]["response_id"], **rating})
            self.stats["ratings"] += 1

    async def _post(self, path: str, **kwargs) -> httpx.Response:
        # A fresh key per action; httpx's transport retries reuse it, so nothing is stored twice.
        headers = {**self.headers, "Idempotency-Key": uuid4().hex}
        reply = await self.http.post(path, headers=headers, **kwargs)
        reply.raise_for_status()
        return reply


def rating_body(rated: object) -> dict | None:
    """What a judge's `rate` gave, as the ratings API takes it: "up"/"down", ("down", reason),
    stars 1-5 as an int, or a dict of the API's own fields (thumb, reason, stars, comment)."""
    if rated is None or rated == "":
        return None
    if isinstance(rated, str):
        return {"thumb": rated}
    if isinstance(rated, tuple):
        return {"thumb": rated[0], "reason": rated[1]}
    if isinstance(rated, int) and not isinstance(rated, bool):
        return {"stars": rated}
    if isinstance(rated, dict):
        return rated or None
    raise ValueError(f"a judge's rate gave {rated!r}: use 'up'/'down', (thumb, reason), stars 1-5 or a dict")


def deal_prompts(prompts: list[str], events: int, rng: random.Random) -> list[str]:
    """`events` prompts in shuffled rounds of the whole set: no repeat until every prompt was asked."""
    dealt: list[str] = []
    while len(dealt) < events:
        deck = list(prompts)
        rng.shuffle(deck)
        dealt.extend(deck)
    return dealt[:events]


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


def _client(url: str, timeout: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=timeout, transport=httpx.AsyncHTTPTransport(retries=2))


async def run(url: str, users: int, events: int, judge: Judge | None, seed: int = 0, timeout: float = 600,
              transcript: Transcript | None = None) -> Counter:
    """`events` turns spread over `users` simulated people, all of them chatting at once.
    Without a judge nobody gives feedback; every answered turn goes into `transcript` if given."""
    rng = random.Random(seed)
    dealt = deal_prompts([p["prompt"] for p in load_prompts()], events, rng)
    stats: Counter = Counter()
    async with _client(url, timeout) as http:
        people = [SimulatedUser(http, judge, random.Random(rng.random()), stats, i) for i in range(users)]
        await asyncio.gather(*(person.sign_in() for person in people))
        if transcript is not None:
            transcript.tokens = [person.token for person in people]
        queue: asyncio.Queue[str] = asyncio.Queue()
        for prompt in dealt:
            queue.put_nowait(prompt)
        with tqdm(total=events, desc="Simulated feedback events", unit="event") as progress:

            async def work(person: SimulatedUser) -> None:
                while not queue.empty():
                    prompt = queue.get_nowait()
                    try:
                        turn = await person.event(prompt)
                        if transcript is not None:
                            transcript.turns.append(turn)
                    except (httpx.HTTPError, RuntimeError) as error:
                        stats["errors"] += 1
                        progress.write(f"event failed: {error}")
                    progress.update()

            await asyncio.gather(*(work(person) for person in people))
    return stats


async def give_feedback(url: str, transcript: Transcript, judge: Judge, timeout: float = 600) -> Counter:
    """Judge a transcript's turns (in the order they were answered) as its users, over the API."""
    stats: Counter = Counter()
    async with _client(url, timeout) as http:
        people = [SimulatedUser(http, judge, random.Random(i), stats, i) for i in range(len(transcript.tokens))]
        for person, token in zip(people, transcript.tokens, strict=True):
            await person.sign_in(token)
        for turn in tqdm(transcript.turns, desc="Simulated feedback", unit="turn"):
            try:
                await people[turn.user].give_feedback(turn)
            except httpx.HTTPError as error:
                stats["errors"] += 1
                tqdm.write(f"feedback failed: {error}")
    return stats


def main(url: str, users: int, events: int, judge: str, seed: int = 0) -> Counter:
    return asyncio.run(run(url, users, events, load_judge(judge), seed))
