"""OpenAI chat-completions request and response shapes (the subset tuneloop serves)."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_CHOICES = 16  # the most `n` a deployment may allow (settings.max_choices: what this one does)
MAX_TOP_LOGPROBS = 20  # as OpenAI
TOOL_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class NotHonoured(ValueError):
    """A parameter asks for something this server does not do."""

    def __init__(self, name: str, value: object) -> None:
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        super().__init__(f"'{name}' is not supported by this server (got {shown}); leave it out")
        self.param = name


class ToolCallFunction(BaseModel):
    name: str = Field(pattern=TOOL_NAME)
    arguments: str = Field(max_length=32_000)  # JSON text, as OpenAI sends it


class ToolCall(BaseModel):
    id: str = Field(max_length=128)
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(BaseModel):
    """A message in a request: what the caller said, what the assistant answered (text or tool
    calls) and what a tool returned."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | None = Field(default=None, max_length=32_000)
    name: str | None = Field(default=None, max_length=64)
    tool_calls: list[ToolCall] | None = None  # an assistant's
    tool_call_id: str | None = Field(default=None, max_length=128)  # a tool's: the call it answers

    @model_validator(mode="after")
    def _says_something(self) -> "ChatMessage":
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a message with role 'tool' needs the 'tool_call_id' of the call it answers")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a message with role '{self.role}' needs 'content'")
        return self


class AnswerMessage(BaseModel):
    """The assistant's message in a response: text, or the tools it calls (then content is null)."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class FunctionDefinition(BaseModel):
    name: str = Field(pattern=TOOL_NAME)
    description: str | None = Field(default=None, max_length=4_000)
    parameters: dict | None = None  # a JSON schema of the arguments
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _a_schema(cls, parameters: dict | None) -> dict | None:
        return None if parameters is None else checked_schema(parameters)


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str = Field(pattern=TOOL_NAME)


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    name: str = Field(pattern=TOOL_NAME)
    description: str | None = None
    json_schema: dict = Field(default_factory=dict, alias="schema")
    strict: bool | None = None

    @field_validator("json_schema")
    @classmethod
    def _a_schema(cls, schema: dict) -> dict:
        return checked_schema(schema)


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> "ResponseFormat":
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("give 'json_schema' exactly when type is 'json_schema'")
        return self


def checked_schema(schema: dict) -> dict:
    """A JSON schema that is one (Draft 2020-12's meta-schema), or a 400 that says where it is not."""
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as error:
        where = "/".join(str(part) for part in error.absolute_path) or "the top"
        raise ValueError(f"not a valid JSON schema at {where}: {error.message}") from None
    return schema


class StreamOptions(BaseModel):
    include_usage: bool = False


# OpenAI parameters this engine does not carry out, each with the value that asks for nothing
# (what clients send when the caller did not set it). Any other value is refused with a 400
# that names the parameter, rather than answered as if it had been honoured: a JSON-mode
# request that gets prose back with a 200 breaks its caller without a word.
NOT_HONOURED: dict[str, tuple] = {
    "functions": (None, []),  # the deprecated forms of tools and tool_choice
    "function_call": (None, "none", "auto"),
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
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
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
        if messages[-1].role not in ("user", "tool"):
            raise ValueError("the last message must have role 'user' (or 'tool', with a tool's result)")
        return messages

    @model_validator(mode="after")
    def _consistent(self) -> "ChatCompletionRequest":
        if self.top_logprobs and not self.logprobs:
            raise ValueError("'top_logprobs' needs 'logprobs': true")
        names = [tool.function.name for tool in self.tools or []]
        if len(set(names)) < len(names):
            raise ValueError("tools: each function needs a name of its own")
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ValueError(f"tool_choice names '{choice.function.name}', which is not one of the tools")
        if choice == "required" and not names:
            raise ValueError("tool_choice 'required' needs tools")
        if names and self.tool_choice != "none" and self.response_format and self.response_format.type != "text":
            raise ValueError("give tools or a JSON response_format, not both")
        return self

    def calls_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"

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


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: None = None


class Choice(BaseModel):
    index: int
    message: AnswerMessage
    finish_reason: str
    logprobs: ChoiceLogprobs | None = None
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
