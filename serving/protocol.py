"""OpenAI chat-completions request and response shapes (the subset tuneloop serves)."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_CHOICES = 2  # an A/B pair at most


class NotHonoured(ValueError):
    """A parameter asks for something this server does not do."""

    def __init__(self, name: str, value: object) -> None:
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        super().__init__(f"'{name}' is not supported by this server (got {shown}); leave it out")
        self.param = name


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=32_000)


class StreamOptions(BaseModel):
    include_usage: bool = False


# OpenAI parameters this engine does not carry out, each with the value that asks for nothing
# (what clients send when the caller did not set it). Any other value is refused with a 400
# that names the parameter, rather than answered as if it had been honoured: a JSON-mode
# request that gets prose back with a 200 breaks its caller without a word.
NOT_HONOURED: dict[str, tuple] = {
    "response_format": (None, {"type": "text"}),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),  # "auto" with no tools asks for nothing
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "parallel_tool_calls": (None, True, False),
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "web_search_options": (None,),
    "store": (None, True),  # tuneloop stores every answer: that is how it learns
    "reasoning_effort": (None,),
    "verbosity": (None,),
}


class ChatCompletionRequest(BaseModel):
    # An unknown parameter is refused (as OpenAI does), so a typo is never silently dropped.
    model_config = ConfigDict(extra="forbid")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    # The same seed, messages and settings give the same answers (choice i samples with seed + i).
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1 - MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)
    # Accepted without effect on the answer: what OpenAI keeps for the caller's own bookkeeping.
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _only_what_is_honoured(cls, data: object) -> object:
        """OpenAI's parameters that this server does not carry out are left out of the schema;
        sent with a value that asks for nothing they are dropped, with any other refused by name."""
        if not isinstance(data, dict):
            return data
        for name in NOT_HONOURED.keys() & data.keys():
            value = data[name]
            if value not in NOT_HONOURED[name] and value not in ([], {}):  # an empty list or map asks for nothing
                raise NotHonoured(name, value)
        return {key: value for key, value in data.items() if key not in NOT_HONOURED}

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if messages[-1].role != "user":
            raise ValueError("the last message must have role 'user'")
        return messages

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > 4:
            raise ValueError("at most 4 stop sequences")
        return stop

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorOut(BaseModel):
    """Errors on /v1 in OpenAI's shape, so OpenAI clients raise their usual exceptions."""

    error: OpenAIErrorBody


def openai_error_responses(*statuses: int) -> dict[int, dict]:
    from feedback.protocol import WHY

    return {status: {"model": OpenAIErrorOut, "description": WHY[status]} for status in statuses}


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Choice(BaseModel):
    index: int
    message: ChatMessage
    finish_reason: str
    response_id: str  # tuneloop: what feedback points at


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "tuneloop"
    root: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
