"""OpenAI-compatible routes: POST /v1/chat/completions (plain and SSE) and GET /v1/models."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from feedback.deps import ApiUser
from feedback.limits import limited
from serving.engine import SamplingParams
from serving.errors import openai_error
from serving.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    ModelCard,
    ModelList,
    Usage,
    openai_error_responses,
)
from serving.service import AnswerDelta, AnswerDone, ChatService, Turn

router = APIRouter(prefix="/v1", tags=["openai"])
RESPONSE_ID_HEADER = "X-Tuneloop-Response-Id"
SERVED_NAME = "tuneloop"  # the live release, whichever it is


def get_chat(request: Request) -> ChatService:
    return request.app.state.chat


ChatDep = Annotated[ChatService, Depends(get_chat)]


def model_ids(request: Request) -> list[str]:
    return [SERVED_NAME, request.app.state.settings.model]


@router.get("/models", response_model=ModelList, responses=openai_error_responses(401))
def list_models(request: Request, _user: ApiUser) -> ModelList:
    base = request.app.state.settings.model
    return ModelList(data=[ModelCard(id=name, root=base) for name in model_ids(request)])


@router.post("/chat/completions", response_model=ChatCompletion, responses={
    200: {"content": {"text/event-stream": {"description": "with stream: true, chunks as server-sent events"}}},
    **openai_error_responses(400, 401, 404, 413, 429, 503)}, dependencies=[Depends(limited("chat turns"))])
async def chat_completions(body: ChatCompletionRequest, request: Request, chat: ChatDep, user: ApiUser):
    if body.model not in model_ids(request):
        return openai_error(404, f"The model '{body.model}' does not exist; GET /v1/models lists the served ones",
                            param="model", code="model_not_found")
    settings = request.app.state.settings
    params = SamplingParams(
        temperature=body.temperature,
        top_p=body.top_p,
        max_tokens=body.max_completion_tokens or body.max_tokens or settings.max_tokens,
        stop=body.stop_sequences(),
        seed=body.seed,
    )
    messages = [message.model_dump() for message in body.messages]
    turn = await chat.open_api_turn(user, messages, n=body.n)
    headers = {RESPONSE_ID_HEADER: ",".join(str(i) for i in turn.response_ids)}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = _sse(chat, turn, params, body.model, include_usage)
        return StreamingResponse(chunks, media_type="text/event-stream", headers=headers)
    responses = await chat.answer(turn, params)
    completion = ChatCompletion(
        id=str(turn.response_ids[0]),
        model=body.model,
        choices=[
            Choice(index=i, message=ChatMessage(role="assistant", content=r.text),
                   finish_reason=r.finish_reason, response_id=str(r.id))
            for i, r in enumerate(responses)
        ],
        usage=_usage(responses[0].prompt_tokens, sum(r.completion_tokens for r in responses)),
    )
    return JSONResponse(completion.model_dump(), headers=headers)


async def _sse(chat: ChatService, turn: Turn, params: SamplingParams, model: str, include_usage: bool) -> AsyncIterator[str]:
    created = int(time.time())
    completion_id = str(turn.response_ids[0])

    def chunk(choices: list[dict], **extra) -> str:  # noqa: ANN003
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": choices, **extra}
        return f"data: {json.dumps(body)}\n\n"

    yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                  "response_id": str(rid)} for i, rid in enumerate(turn.response_ids)])
    prompt_tokens = completion_tokens = 0
    try:
        async for event in chat.stream(turn, params):
            if isinstance(event, AnswerDelta):
                yield chunk([{"index": event.index, "delta": {"content": event.text}, "finish_reason": None}])
            elif isinstance(event, AnswerDone):
                response = event.response
                if event.unshown:  # what the output checks held back until the answer was whole
                    yield chunk([{"index": event.index, "delta": {"content": event.unshown}, "finish_reason": None}])
                prompt_tokens = response.prompt_tokens
                completion_tokens += response.completion_tokens
                yield chunk([{"index": event.index, "delta": {}, "finish_reason": response.finish_reason,
                              "response_id": str(response.id)}])
    except Exception as error:  # the stream has started: report in-band, as OpenAI does
        yield f"data: {json.dumps({'error': {'message': str(error), 'type': 'server_error'}})}\n\n"
        return
    if include_usage:
        yield chunk([], usage=_usage(prompt_tokens, completion_tokens).model_dump())
    yield "data: [DONE]\n\n"


def _usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)
