"""What a chat-completions request asks its answer to be (free text, JSON, or tool calls), and
how the model's text is read back into that shape.

JSON is enforced by constrained decoding (an engine `Guide`). Tools reach the model as text in
its system message, in the Hermes format (`<tool_call>{"name": ..., "arguments": ...}</tool_call>`,
the one Qwen, Hermes and SmolLM3 templates use), and the same text is read back into
`tool_calls`. Written here rather than through each chat template's own `tools=` rendering
because the embedded model's template has none, and because vLLM would need a parser flag per
model family to do the reading: one format, the same on every engine and every model.

`tool_choice` "required" and a named function are guided too, so the call always parses;
"auto" lets the model choose between text and calls.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from serving.engine import Guide
from serving.protocol import ChatCompletionRequest, ChatMessage, NamedToolChoice, Tool, ToolCall, ToolCallFunction

TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
ANY_ARGUMENTS = {"type": "object"}


@dataclass(frozen=True)
class AnswerFormat:
    guide: Guide | None = None
    instructions: str | None = None  # for the system message: the tools and how to call them
    tools: tuple[str, ...] = ()  # the functions it may call, when it may call any
    forced: str | None = None  # the one function it must call (a named tool_choice)
    required: bool = False  # it must call at least one

    @property
    def calls_tools(self) -> bool:
        return bool(self.tools)


def answer_format(body: ChatCompletionRequest) -> AnswerFormat:
    if body.calls_tools():
        return _tools_format(body)
    if body.response_format is None or body.response_format.type == "text":
        return AnswerFormat()
    if body.response_format.type == "json_object":
        return AnswerFormat(guide=Guide())
    return AnswerFormat(guide=Guide(json.dumps(body.response_format.json_schema.json_schema)))


def _tools_format(body: ChatCompletionRequest) -> AnswerFormat:
    tools = {tool.function.name: tool for tool in body.tools}
    instructions = _instructions(body.tools)
    if isinstance(body.tool_choice, NamedToolChoice):
        name = body.tool_choice.function.name
        return AnswerFormat(Guide(json.dumps(_arguments(tools[name]))), instructions, tuple(tools), forced=name)
    if body.tool_choice == "required":
        calls = {"type": "array", "minItems": 1, "items": {"anyOf": [_call_schema(tool) for tool in body.tools]}}
        if not body.parallel_tool_calls:
            calls["maxItems"] = 1
        return AnswerFormat(Guide(json.dumps(calls)), instructions, tuple(tools), required=True)
    return AnswerFormat(None, instructions, tuple(tools))


def _arguments(tool: Tool) -> dict:
    return tool.function.parameters or ANY_ARGUMENTS


def _call_schema(tool: Tool) -> dict:
    return {"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
            "properties": {"name": {"const": tool.function.name}, "arguments": _arguments(tool)}}


def _instructions(tools: list[Tool]) -> str:
    listed = "\n".join(json.dumps(tool.model_dump(exclude_none=True)) for tool in tools)
    return ("You may call one or more functions to answer. The functions, as JSON signatures:\n"
            f"<tools>\n{listed}\n</tools>\n"
            "To call one, answer with a JSON object holding its name and arguments, inside tags:\n"
            '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


# ---------------------------------------------------------------- the conversation, as text


def model_messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """The request's messages as the model (and the store) sees them: role and text only.
    A developer message is a system message (as OpenAI treats it for older models); an
    assistant's tool calls and a tool's result are written as the same tags the model calls with."""
    out = []
    for message in messages:
        if message.role == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{message.content}\n</tool_response>"})
        elif message.role == "assistant" and message.tool_calls:
            calls = "\n".join(_call_text(call) for call in message.tool_calls)
            out.append({"role": "assistant", "content": "\n".join(filter(None, [message.content, calls]))})
        else:
            out.append({"role": "system" if message.role == "developer" else message.role,
                        "content": message.content or ""})
    return out


def _call_text(call: ToolCall) -> str:
    """The call as the model wrote it: its arguments verbatim (not re-serialised, which would
    escape non-ASCII text and respace it), or as a JSON string where they are not JSON."""
    arguments = call.function.arguments
    if _json_or_none(arguments) is None:
        arguments = json.dumps(arguments, ensure_ascii=False)
    return f'<tool_call>\n{{"name": {json.dumps(call.function.name)}, "arguments": {arguments}}}\n</tool_call>'


# ---------------------------------------------------------------- the answer, read back


@dataclass(frozen=True)
class ReadAnswer:
    content: str | None
    tool_calls: list[ToolCall] | None = None

    def finish_reason(self, engine_reason: str) -> str:
        return "tool_calls" if self.tool_calls and engine_reason == "stop" else engine_reason


def read_answer(answer_format: AnswerFormat, text: str) -> ReadAnswer:
    if not answer_format.calls_tools:
        return ReadAnswer(text)
    if answer_format.forced:
        return ReadAnswer(None, [_tool_call(answer_format.forced, text)])
    if answer_format.required:
        calls = _json_or_none(text)
        if isinstance(calls, list):
            return ReadAnswer(None, [_tool_call(c["name"], json.dumps(c["arguments"])) for c in calls])
        return ReadAnswer(text)  # cut off by the token cap before the calls closed
    return _read_tagged(answer_format, text)


def _read_tagged(answer_format: AnswerFormat, text: str) -> ReadAnswer:
    """Calls in `<tool_call>` tags, each a JSON object naming one of the tools; the text
    around them, if any, is the content. An answer without one valid call is plain text."""
    calls = []
    for match in TOOL_CALL.finditer(text):
        call = _json_or_none(match.group(1))
        if isinstance(call, dict) and call.get("name") in answer_format.tools:
            arguments = call.get("arguments", call.get("parameters", {}))
            calls.append(_tool_call(call["name"], arguments if isinstance(arguments, str) else json.dumps(arguments)))
    if not calls:
        return ReadAnswer(text)
    content = TOOL_CALL.sub("", text).strip()
    return ReadAnswer(content or None, calls)


def _tool_call(name: str, arguments: str) -> ToolCall:
    return ToolCall(id=f"call_{uuid.uuid4().hex[:24]}", function=ToolCallFunction(name=name, arguments=arguments))


def _json_or_none(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None
