"""A chat turn: store the prompt, generate one or two answers, store each as a Response.

Every channel (OpenAI API, web widget, Slack) goes through here, so every answer
anywhere is a stored Response that feedback can point at.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace

from asgi_correlation_id import correlation_id
from sqlalchemy.engine import Engine as Database

from feedback.redaction import redact_or_withhold
from serving import metrics
from serving.engine import (Completion, Engine, EngineError, EngineRefused, GenerationRequest, SamplingParams,
                            StreamEvent, TokenLogprob)
from serving.hooks import Checked, NoHooks, TurnHooks
from serving.pairs import draw_contrast
from serving.routing import LiveReleases, ReleaseChoice
from store import conversations
from store.db import session_scope
from store.models import AnswerFailure, Channel, Message, MessageRole, Response, User


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
    # Per answer, where they differ: an interleaved pair's canary and active release.
    answer_releases: list[ReleaseChoice] = field(default_factory=list)
    channel: str = "web"
    kind: str = "sample"  # of an A/B pair: two samples, a "contrast", or a plugin's alternative such as "rag"
    # Per answer: the messages it is generated from, and what its trace adds.
    answer_messages: list[list[dict[str, str]]] = field(default_factory=list)
    answer_traces: list[dict] = field(default_factory=list)
    # Per answer: how much hotter than the turn's temperature it is sampled (a contrast's).
    answer_heat: list[float] = field(default_factory=list)
    citation: str = ""  # appended to a single answer made with retrieved context
    refusal: str | None = None  # the input checks refused: this is the whole answer
    input_decisions: list[dict] = field(default_factory=list)
    request_id: str | None = field(default_factory=lambda: correlation_id.get())  # the HTTP request that opened it

    def messages_for(self, index: int) -> list[dict[str, str]]:
        return self.answer_messages[index] if self.answer_messages else self.messages

    def release_for(self, index: int) -> ReleaseChoice:
        return self.answer_releases[index] if self.answer_releases else self.release

    def params_for(self, index: int, params: SamplingParams) -> SamplingParams:
        heat = self.answer_heat[index] if self.answer_heat else 0.0
        if heat:
            params = replace(params, temperature=min(1.2, params.temperature + heat))
        if params.seed is not None and index:  # a seeded request's n answers: reproducible, not alike
            params = replace(params, seed=params.seed + index)
        return params


@dataclass
class AnswerDelta:
    index: int
    text: str


@dataclass
class AnswerDone:
    index: int
    response: Response
    # The end of the answer that no delta carried (output checks hold text back), or
    # None when the checks rewrote what was already shown: then `response.text` replaces it.
    unshown: str | None = ""
    # Each token's log-probability when asked for, and only while they still spell the text
    # (not once the output checks or a citation changed it).
    logprobs: list[TokenLogprob] | None = None


TurnEvent = AnswerDelta | AnswerDone
INTERLEAVED = "release"  # a pair's kind when its answers come from the canary and the active release


class ChatService:
    def __init__(
        self, engine: Engine, database: Database, live: LiveReleases, *, system_prompt: str,
        hooks: TurnHooks | None = None, ab_strategy: str = "contrast", compare_share: float = 0.0,
    ):
        self.engine = engine
        self.database = database
        self.live = live
        self.system_prompt = system_prompt
        self.hooks = hooks or NoHooks()
        self.ab_strategy = ab_strategy  # how an A/B pair's second answer differs (serving/pairs.py)
        draw_contrast(ab_strategy)  # an unknown strategy fails here, at start-up
        # While a canary runs: the share of widget and Slack turns that show its answer beside the
        # active release's (serving/canary.py reads the users' choices).
        self.compare_share = compare_share

    # ------------------------------------------------------------ opening a turn

    async def open_turn(self, conversation_id: uuid.UUID, text: str, *, ab: bool = False, channel: str = "web") -> Turn:
        """A new user message in a stored conversation (web widget, Slack).

        The input checks see it first (what they redact is never stored). Then the turn
        gets one answer, or two in random order: a plugin's alternative (such as retrieval)
        on its share of turns, or, when `ab`, the answer a single turn would get beside a
        contrast (serving/pairs.py).
        """
        return await asyncio.to_thread(self._open_turn, conversation_id, text, ab, channel)

    async def open_api_turn(self, user: User, messages: Sequence[dict[str, str]], n: int = 1,
                            instructions: str | None = None) -> Turn:
        """A stateless OpenAI-style request: its whole history becomes a new conversation.
        `instructions` (the tools it may call) end the system message the model sees."""
        return await asyncio.to_thread(self._open_api_turn, user, list(messages), n, instructions)

    def _open_turn(self, conversation_id: uuid.UUID, text: str, ab: bool, channel: str) -> Turn:
        with session_scope(self.database) as session:
            earlier = _answered_history(conversations.conversation_messages(session, conversation_id=conversation_id))
            checked = self.hooks.check_input(text, channel, earlier)
            checked.text = self._storable(checked.text)
            prompt = conversations.add_message(session, conversation_id=conversation_id, role=MessageRole.user,
                                               content=checked.text)
        turn = self._turn(conversation_id, prompt.id, [*earlier, {"role": "user", "content": checked.text}], 1)
        turn.channel, turn.input_decisions, turn.refusal = channel, checked.decisions, checked.refusal
        if turn.refusal is None:
            self._plan(turn, checked.text, ab)
        return turn

    def _plan(self, turn: Turn, prompt: str, ab: bool) -> None:
        """One answer, or a pair (an alternative's, or the plain answer and a contrast) shown in random order."""
        pair = self.hooks.plan_pair(prompt, turn.messages)
        if pair is None and self.live.canary is not None and random.random() < self.compare_share:
            turn.kind = INTERLEAVED  # the two releases, chosen when generation starts
        elif pair is not None:
            turn.kind, turn.answer_messages = pair.kind, [turn.messages, pair.messages]
            turn.answer_traces = [{}, pair.trace]
        elif ab:
            self._plan_samples(turn)
        else:
            augmented = self.hooks.augment(prompt, turn.messages)
            if augmented is not None:
                turn.answer_messages, turn.answer_traces = [augmented.messages], [augmented.trace]
                turn.citation = augmented.citation
            return
        turn.response_ids = [uuid.uuid4(), uuid.uuid4()]
        turn.positions = random.sample([0, 1], 2)

    def _plan_samples(self, turn: Turn) -> None:
        contrast = draw_contrast(self.ab_strategy)
        if contrast is None:
            turn.answer_messages = [turn.messages, turn.messages]
            return
        turn.kind = "contrast"
        turn.answer_messages = [turn.messages, contrast.messages(turn.messages)]
        turn.answer_traces = [{}, contrast.trace()]
        turn.answer_heat = [0.0, contrast.heat]

    def _open_api_turn(self, user: User, messages: list[dict[str, str]], n: int, instructions: str | None) -> Turn:
        last = messages[-1]
        checked = self.hooks.check_input(last["content"], "api", messages[:-1]) if last["role"] == "user" else None
        if checked is not None:
            messages = [*messages[:-1], {**last, "content": checked.text}]
        # The whole history is stored, so the whole history is redacted (and answered as stored).
        messages = [{**message, "content": self._storable(message["content"])} for message in messages]
        with session_scope(self.database) as session:
            conversation = conversations.create_conversation(session, user=user, channel=Channel.api)
            for message in messages:
                stored = conversations.add_message(session, conversation_id=conversation.id,
                                                   role=MessageRole(message["role"]), content=message["content"])
        turn = self._turn(conversation.id, stored.id, messages, n, instructions)
        turn.channel = "api"
        if checked is not None:
            turn.input_decisions, turn.refusal = checked.decisions, checked.refusal
        return turn

    def _storable(self, text: str) -> str:
        """The text as it may be stored: redacted, or withheld when the check could not run."""
        return redact_or_withhold(self.hooks.redact, text)

    def _turn(self, conversation_id, prompt_message_id, history, n, instructions=None) -> Turn:  # noqa: ANN001
        if not history or history[0]["role"] != "system":
            history = [{"role": "system", "content": self.system_prompt}, *history]
        if instructions:
            history = [{"role": "system", "content": f"{history[0]['content']}\n\n{instructions}"}, *history[1:]]
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
        if turn.kind == INTERLEAVED:
            self._interleave(turn)
        if turn.refusal is not None:
            refused = Completion(turn.refusal, "content_filter", 0, 0)
            stored = await asyncio.to_thread(self._store, turn, 0, refused, params, started, True, [])
            yield AnswerDone(0, stored, turn.refusal)
            return
        serving = {turn.release_for(i) for i in range(len(turn.response_ids))}
        for release in serving:
            self.live.begin(release)  # its adapter stays loaded until this turn is done
        try:
            requests = [self._request(turn, i, params) for i in range(len(turn.response_ids))]
            guards = [_GuardedAnswer(self.hooks, turn) for _ in turn.response_ids]
            speed = _Speed(type(self.engine).__name__, started, len(requests))
            async for index, event in _merge([self.engine.stream(r) for r in requests]):
                guard = guards[index]
                if event.completion is None:
                    speed.text(index)
                    shown = await guard.add(event.text)
                    if shown:
                        yield AnswerDelta(index, shown)
                    continue
                speed.done(index, event.completion)
                checked = await guard.finish(event.completion.text + (turn.citation if turn.citation else ""))
                completion = _checked_completion(event.completion, checked)
                response = await asyncio.to_thread(
                    self._store, turn, index, completion, requests[index].params, started, index == continue_with,
                    checked.decisions,
                )
                unchanged = completion.text == event.completion.text
                yield AnswerDone(index, response, guard.unshown(response.text),
                                 event.completion.logprobs if unchanged else None)
        except EngineRefused:  # the request asked for what the engine cannot do: the caller's to change
            raise
        except EngineError as error:
            metrics.ANSWER_FAILURES.labels(type(self.engine).__name__).inc()
            await asyncio.to_thread(self._store_failure, turn, error)  # the release's error rate counts it
            raise
        finally:
            for release in serving:
                self.live.end(release)

    @staticmethod
    def _request(turn: Turn, index: int, params: SamplingParams) -> GenerationRequest:
        release, params = turn.release_for(index), turn.params_for(index, params)
        messages = turn.messages_for(index)
        if params.guide is None:  # a guided answer's form is the caller's (JSON, a schema), not a style's
            messages = release.messages(messages)
        return GenerationRequest(messages, params, release.adapter)

    async def answer(self, turn: Turn, params: SamplingParams) -> list[Response]:
        done = [event async for event in self.stream(turn, params) if isinstance(event, AnswerDone)]
        return [event.response for event in sorted(done, key=lambda event: event.index)]

    def _interleave(self, turn: Turn) -> None:
        """The conversation's own release first (what it goes on with), the other one second."""
        other = self.live.active if turn.release == self.live.canary else self.live.canary
        if other is None or other == turn.release:  # the canary ended since the turn was planned
            turn.kind = "sample"
            return
        turn.answer_releases = [turn.release, other]

    def _store_failure(self, turn: Turn, error: EngineError) -> None:
        with session_scope(self.database) as session:
            session.add(AnswerFailure(release_id=turn.release.release_id, conversation_id=turn.conversation_id,
                                      reason=str(error)[:500]))

    def _store(self, turn: Turn, index: int, completion: Completion, params: SamplingParams, started: float,
               chosen: bool, output_decisions: list[dict]) -> Response:
        release = turn.release_for(index)
        trace = {"release": release.name, "adapter": release.adapter, "index": index,
                 "shown_at": turn.positions[index], "channel": turn.channel, "request_id": turn.request_id,
                 "plugins": {"input": turn.input_decisions, "output": output_decisions}}
        if len(turn.response_ids) == 2:
            trace["pair_kind"] = turn.kind
        if turn.answer_traces:
            trace.update(turn.answer_traces[index])
        response = Response(
            id=turn.response_ids[index],
            conversation_id=turn.conversation_id,
            prompt_message_id=turn.prompt_message_id,
            release_id=release.release_id,
            text=self._storable(completion.text),
            finish_reason=completion.finish_reason,
            latency_ms=(time.perf_counter() - started) * 1000,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            params={"temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_tokens, "stop": list(params.stop)},
            trace=trace,
        )
        with session_scope(self.database) as session:
            conversations.add_response(session, response=response)
            if chosen:
                conversations.continue_with(session, prompt_message_id=turn.prompt_message_id, response=response)
        return response


class _Speed:
    """A turn's answers timed for Prometheus: to the first piece of text, and tokens per second."""

    def __init__(self, engine: str, started: float, answers: int) -> None:
        self.engine, self.started = engine, started
        self.first: list[float | None] = [None] * answers

    def text(self, index: int) -> None:
        if self.first[index] is None:
            self.first[index] = time.perf_counter()
            metrics.FIRST_TOKEN.labels(self.engine).observe(self.first[index] - self.started)

    def done(self, index: int, completion: Completion) -> None:
        seconds = time.perf_counter() - self.started
        metrics.ANSWERS.labels(self.engine, completion.finish_reason).inc()
        metrics.GENERATED_TOKENS.labels(self.engine).inc(completion.completion_tokens)
        if completion.completion_tokens and seconds > 0:
            metrics.TOKENS_PER_SECOND.labels(self.engine).observe(completion.completion_tokens / seconds)


# Output checks may rewrite what is still arriving (a card number, a key): an answer is
# shown only as far as it has been checked, less its last HOLD_BACK characters, which
# could be the start of something a check would redact. Checks run every CHECK_EVERY
# new characters, not per token, to keep their cost per turn small.
HOLD_BACK, CHECK_EVERY = 64, 320


class _GuardedAnswer:
    """One answer's text on its way to the user, through the output checks."""

    def __init__(self, hooks: TurnHooks, turn: Turn) -> None:
        self.hooks, self.turn = hooks, turn
        self.raw, self.shown, self.checked_at, self.stopped = "", "", 0, False

    async def add(self, delta: str) -> str:
        """The text that may be shown now (often none yet)."""
        self.raw += delta
        if not self.hooks.checks_output:
            self.shown += delta
            return delta
        if self.stopped or len(self.raw) - self.checked_at < CHECK_EVERY:
            return ""
        self.checked_at = len(self.raw)
        checked = await asyncio.to_thread(self._check, self.raw)
        safe = checked.text[: max(0, len(checked.text) - HOLD_BACK)]
        if checked.refusal is not None or not safe.startswith(self.shown):
            self.stopped = True  # nothing more until the final text, which replaces what was shown
            return ""
        new, self.shown = safe[len(self.shown):], safe
        return new

    def unshown(self, final: str) -> str | None:
        """What of the final text no delta carried (held back, or a citation), if it only extends."""
        return final[len(self.shown):] if final.startswith(self.shown) else None

    async def finish(self, text: str) -> Checked:
        return await asyncio.to_thread(self._check, text)

    def _check(self, text: str) -> Checked:
        return self.hooks.check_output(text, self.turn.channel, self.turn.release.name if self.turn.release else None)


def _checked_completion(completion: Completion, checked: Checked) -> Completion:
    if checked.refusal is not None:
        return replace(completion, text=checked.refusal, finish_reason="content_filter")
    return replace(completion, text=checked.text)


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
