"""A chat turn: store the prompt, generate one or two answers, store each as a Response.

Every channel (OpenAI API, web widget, Slack) goes through here, so every answer
anywhere is a stored Response that feedback can point at.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine as Database

from feedback import crud
from feedback.db import session_scope
from feedback.models import Channel, Message, MessageRole, Response, User
from serving.engine import Engine, GenerationRequest, SamplingParams, StreamEvent
from serving.releases import LiveReleases, ReleaseChoice


@dataclass
class Turn:
    """A prompt that is about to be answered, with the ids its answers will carry."""

    conversation_id: uuid.UUID
    prompt_message_id: int
    messages: list[dict[str, str]]
    response_ids: list[uuid.UUID] = field(default_factory=list)
    # Where each answer is shown (0 = first); an A/B turn shuffles them.
    positions: list[int] = field(default_factory=list)
    release: ReleaseChoice | None = None  # chosen when generation starts


@dataclass
class AnswerDelta:
    index: int
    text: str


@dataclass
class AnswerDone:
    index: int
    response: Response


TurnEvent = AnswerDelta | AnswerDone


class ChatService:
    def __init__(self, engine: Engine, database: Database, live: LiveReleases, *, system_prompt: str):
        self.engine = engine
        self.database = database
        self.live = live
        self.system_prompt = system_prompt

    # ------------------------------------------------------------ opening a turn

    async def open_turn(self, conversation_id: uuid.UUID, text: str, n: int = 1) -> Turn:
        """A new user message in a stored conversation (web widget, Slack)."""
        return await asyncio.to_thread(self._open_turn, conversation_id, text, n)

    async def open_api_turn(self, user: User, messages: Sequence[dict[str, str]], n: int = 1) -> Turn:
        """A stateless OpenAI-style request: its whole history becomes a new conversation."""
        return await asyncio.to_thread(self._open_api_turn, user, list(messages), n)

    def _open_turn(self, conversation_id: uuid.UUID, text: str, n: int) -> Turn:
        with session_scope(self.database) as session:
            prompt = crud.add_message(session, conversation_id, MessageRole.user, text)
            history = _answered_history(crud.conversation_messages(session, conversation_id))
        return self._turn(conversation_id, prompt.id, history, n)

    def _open_api_turn(self, user: User, messages: list[dict[str, str]], n: int) -> Turn:
        with session_scope(self.database) as session:
            conversation = crud.create_conversation(session, user, Channel.api)
            for message in messages:
                stored = crud.add_message(session, conversation.id, MessageRole(message["role"]), message["content"])
        return self._turn(conversation.id, stored.id, messages, n)

    def _turn(self, conversation_id, prompt_message_id, history, n) -> Turn:  # noqa: ANN001
        if not history or history[0]["role"] != "system":
            history = [{"role": "system", "content": self.system_prompt}, *history]
        ids = [uuid.uuid4() for _ in range(n)]
        return Turn(conversation_id, prompt_message_id, history, ids, list(range(n)))

    # ------------------------------------------------------------ answering

    async def stream(self, turn: Turn, params: SamplingParams) -> AsyncIterator[TurnEvent]:
        """Generate every answer of the turn at once (they share a batch) and store each.

        The conversation goes on with the answer shown first, until a user's A/B choice
        says otherwise.
        """
        continue_with = turn.positions.index(0)
        started = time.perf_counter()
        turn.release = self.live.choose(turn.conversation_id)
        self.live.begin(turn.release)  # its adapter stays loaded until this turn is done
        try:
            request = GenerationRequest(turn.messages, params, turn.release.adapter)
            streams = [self.engine.stream(request) for _ in turn.response_ids]
            async for index, event in _merge(streams):
                if event.completion is None:
                    yield AnswerDelta(index, event.text)
                    continue
                response = await asyncio.to_thread(
                    self._store, turn, index, event, params, started, index == continue_with
                )
                yield AnswerDone(index, response)
        finally:
            self.live.end(turn.release)

    async def answer(self, turn: Turn, params: SamplingParams) -> list[Response]:
        done = [event async for event in self.stream(turn, params) if isinstance(event, AnswerDone)]
        return [event.response for event in sorted(done, key=lambda event: event.index)]

    def _store(self, turn: Turn, index: int, event: StreamEvent, params: SamplingParams, started: float, chosen: bool) -> Response:
        completion = event.completion
        response = Response(
            id=turn.response_ids[index],
            conversation_id=turn.conversation_id,
            prompt_message_id=turn.prompt_message_id,
            release_id=turn.release.release_id,
            text=completion.text,
            finish_reason=completion.finish_reason,
            latency_ms=(time.perf_counter() - started) * 1000,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            params={"temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_tokens, "stop": list(params.stop)},
            trace={"release": turn.release.name, "adapter": turn.release.adapter, "index": index,
                   "shown_at": turn.positions[index]},
        )
        with session_scope(self.database) as session:
            crud.add_response(session, response)
            if chosen:
                crud.continue_with(session, turn.prompt_message_id, response)
        return response


def _answered_history(messages: Sequence[Message]) -> list[dict[str, str]]:
    """The conversation as the model should see it: a prompt whose answer never arrived
    (generation failed, the client left) is dropped rather than sent twice in a row."""
    kept = [m for i, m in enumerate(messages)
            if not (m.role == MessageRole.user and i + 1 < len(messages) and messages[i + 1].role == MessageRole.user)]
    return [{"role": m.role.value, "content": m.content} for m in kept]


async def _merge(streams: list[AsyncIterator[StreamEvent]]) -> AsyncIterator[tuple[int, StreamEvent]]:
    """Interleave several streams as their events arrive, each tagged with its index."""
    queue: asyncio.Queue[tuple[int, StreamEvent | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[StreamEvent]) -> None:
        try:
            async for event in stream:
                await queue.put((index, event))
        except Exception as error:  # handed to the consumer, re-raised there
            await queue.put((index, error))
        else:
            await queue.put((index, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, event = await queue.get()
            if event is None:
                remaining -= 1
            elif isinstance(event, BaseException):
                raise event
            else:
                yield index, event
    finally:
        for task in tasks:
            task.cancel()
