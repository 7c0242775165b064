"""A chat-completions request carried out: the turn's answers as one response, or as SSE chunks.

The router (serving/router.py) validates and dispatches; the shapes are serving/protocol.py's.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from serving.answer_format import AnswerFormat, ReadAnswer, read_answer
from serving.engine import SamplingParams, TokenLogprob
from serving.protocol import AnswerMessage, ChatCompletion, Choice, ChoiceLogprobs, TopLogprob, Usage
from serving.protocol import TokenLogprob as LogprobOut
from serving.service import AnswerDelta, AnswerDone, ChatService, Turn


@dataclass(frozen=True)
class Asked:
    """What shapes the response beyond the sampling settings."""

    model: str
    answer_format: AnswerFormat
    logprobs: bool = False
    include_usage: bool = False


async def complete(chat: ChatService, turn: Turn, params: SamplingParams, asked: Asked) -> ChatCompletion:
    done = sorted([event async for event in chat.stream(turn, params) if isinstance(event, AnswerDone)],
                  key=lambda event: event.index)
    choices = []
    for event in done:
        response, answer = event.response, read_answer(asked.answer_format, event.response.text)
        choices.append(Choice(
            index=event.index, message=AnswerMessage(content=answer.content, tool_calls=answer.tool_calls),
            finish_reason=answer.finish_reason(response.finish_reason), response_id=str(response.id),
            logprobs=_logprobs(event.logprobs) if asked.logprobs else None))
    return ChatCompletion(id=str(turn.response_ids[0]), model=asked.model, choices=choices,
                          usage=usage(done[0].response.prompt_tokens, sum(e.response.completion_tokens for e in done)))


async def stream_chunks(chat: ChatService, turn: Turn, params: SamplingParams, asked: Asked) -> AsyncIterator[str]:
    """Server-sent events as OpenAI sends them. An answer that may call tools is sent whole when
    it is done: until then nobody knows whether its text is content or a call."""
    created, completion_id = int(time.time()), str(turn.response_ids[0])
    holds_text = asked.answer_format.calls_tools

    def chunk(choices: list[dict], **extra) -> str:  # noqa: ANN003
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": asked.model,
                "choices": choices, **extra}
        return f"data: {json.dumps(body)}\n\n"

    yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                  "response_id": str(rid)} for i, rid in enumerate(turn.response_ids)])
    prompt_tokens = completion_tokens = 0
    try:
        async for event in chat.stream(turn, params):
            if isinstance(event, AnswerDelta):
                if not holds_text:
                    yield chunk([{"index": event.index, "delta": {"content": event.text}, "finish_reason": None}])
                continue
            response = event.response
            prompt_tokens = response.prompt_tokens
            completion_tokens += response.completion_tokens
            answer = read_answer(asked.answer_format, response.text)
            for delta in _last_deltas(event, answer, holds_text, asked.logprobs):
                yield chunk([{"index": event.index, "finish_reason": None, **delta}])
            yield chunk([{"index": event.index, "delta": {}, "finish_reason": answer.finish_reason(response.finish_reason),
                          "response_id": str(response.id)}])
    except Exception as error:  # the stream has started: report in-band, as OpenAI does
        yield f"data: {json.dumps({'error': {'message': str(error), 'type': 'server_error'}})}\n\n"
        return
    if asked.include_usage:
        yield chunk([], usage=usage(prompt_tokens, completion_tokens).model_dump())
    yield "data: [DONE]\n\n"


def _last_deltas(event: AnswerDone, answer: ReadAnswer, held: bool, logprobs: bool) -> list[dict]:
    """What of a finished answer its deltas have not carried: held-back text, or the whole
    answer when it was held, its tool calls, and its log-probabilities."""
    deltas = []
    if held and answer.tool_calls:
        calls = [{"index": i, **call.model_dump()} for i, call in enumerate(answer.tool_calls)]
        deltas.append({"delta": {"content": answer.content, "tool_calls": calls}})
    elif held:
        deltas.append({"delta": {"content": event.response.text}})
    elif event.unshown:  # what the output checks held back until the answer was whole
        deltas.append({"delta": {"content": event.unshown}})
    if logprobs:
        deltas.append({"delta": {}, "logprobs": _logprobs(event.logprobs).model_dump()})
    return deltas


def _logprobs(logprobs: Sequence[TokenLogprob] | None) -> ChoiceLogprobs:
    """OpenAI's shape; null content when there are none to give (the output checks changed the text)."""
    if logprobs is None:
        return ChoiceLogprobs(content=None)
    return ChoiceLogprobs(content=[
        LogprobOut(token=t.token, logprob=t.logprob, bytes=list(t.token.encode()),
                   top_logprobs=[TopLogprob(token=token, logprob=value, bytes=list(token.encode()))
                                 for token, value in t.top])
        for t in logprobs])


def usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)
