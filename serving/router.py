"""OpenAI-compatible routes: POST /v1/chat/completions (plain and SSE) and GET /v1/models.

The request is checked and dispatched here; serving/chat_completions.py carries it out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from feedback.deps import ApiUser
from feedback.limits import limited
from serving.answer_format import answer_format as format_of, model_messages
from serving.chat_completions import Asked, complete, stream_chunks
from serving.engine import SamplingParams
from serving.errors import openai_error
from serving.protocol import ChatCompletion, ChatCompletionRequest, ModelCard, ModelList, openai_error_responses
from serving.service import ChatService

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
    settings = request.app.state.settings
    if body.model not in model_ids(request):
        return openai_error(404, f"The model '{body.model}' does not exist; GET /v1/models lists the served ones",
                            param="model", code="model_not_found")
    if body.n > settings.max_choices:
        return openai_error(400, f"n: at most {settings.max_choices} answers per request here (TUNELOOP_MAX_CHOICES)",
                            param="n", code="invalid_value")
    answer_format = format_of(body)
    params = SamplingParams(
        temperature=body.temperature,
        top_p=body.top_p,
        max_tokens=body.max_completion_tokens or body.max_tokens or settings.max_tokens,
        stop=body.stop_sequences(),
        seed=body.seed,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        guide=answer_format.guide,
    )
    turn = await chat.open_api_turn(user, model_messages(body.messages), n=body.n,
                                    instructions=answer_format.instructions)
    headers = {RESPONSE_ID_HEADER: ",".join(str(i) for i in turn.response_ids)}
    asked = Asked(body.model, answer_format, body.logprobs,
                  include_usage=bool(body.stream_options and body.stream_options.include_usage))
    if body.stream:
        return StreamingResponse(stream_chunks(chat, turn, params, asked), media_type="text/event-stream",
                                 headers=headers)
    completion = await complete(chat, turn, params, asked)
    return JSONResponse(completion.model_dump(), headers=headers)
