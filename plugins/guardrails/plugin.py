"""The built-in guardrails plugin: a Guardrails AI `Guard` on the user's message and one on
the answer, from the file in TUNELOOP_GUARDRAILS_CONFIG (else the bundled `default.yaml`).

Registers one input check ("guardrails.input"), one output check ("guardrails.output"), the
redactor every stored text passes ("guardrails.store") and the reward function `guardrail_reward` (-1.0 for an answer the output guard would fix or
refuse). The file is read and checked when the plugin registers (a bad file stops start-up);
the Guards are built on first use, because importing Guardrails AI takes seconds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Literal

from plugins.config import PluginSettings
from plugins.guardrails.config import GuardrailsConfig, load_config
from plugins.hookspecs import hookimpl
from plugins.protocols import TurnContext, Verdict

Direction = Literal["input", "output", "store"]


class LazyGuards:
    """The input and the output `RuleGuard` of one configuration, built together on the first
    check and then reused. Building both at once also keeps any Guard from being made while
    another runs: making one turns Guardrails' telemetry on for a moment (it re-reads its rc)."""

    def __init__(self, config: GuardrailsConfig, system_prompt: str) -> None:
        self.config, self.system_prompt = config, system_prompt
        self._guards: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def check(self, direction: Direction, text: str) -> Verdict:
        if self._guards is None:
            with self._lock:
                if self._guards is None:
                    self._guards = self._build()
        return self._guards[direction].check(text)

    def _build(self) -> dict[str, Any]:
        from plugins.guardrails.guards import RuleGuard  # imports Guardrails AI

        return {direction: RuleGuard(rules, f"guardrails.{direction}", self.system_prompt)
                for direction, rules in (("input", self.config.input), ("output", self.config.output),
                                         ("store", self.config.store)) if rules}


_SHARED: dict[str, LazyGuards] = {}
_SHARED_LOCK = threading.Lock()


def shared_guards(settings: PluginSettings | None) -> LazyGuards:
    """The guards of the settings' file, one per configuration in this process (checks and the
    reward function share them). Reads and checks the file each time: a bad one raises
    `GuardrailsConfigError` saying what to fix."""
    config = load_config(settings.guardrails_config if settings else None)
    system_prompt = (settings.system_prompt if settings else "") or ""
    key = f"{config.model_dump_json()}\0{system_prompt}"
    with _SHARED_LOCK:
        return _SHARED.setdefault(key, LazyGuards(config, system_prompt))


class GuardrailsInputCheck:
    """The input rules on each user message: redact (fix), refuse the turn, or flag."""

    name = "guardrails.input"

    def __init__(self, guards: LazyGuards) -> None:
        self.fail_closed = False
        self.guards = guards

    def check_input(self, text: str, context: TurnContext) -> Verdict:
        return self.guards.check("input", text)


class GuardrailsOutputCheck:
    """The output rules on each answer, before it is shown and stored."""

    name = "guardrails.output"

    def __init__(self, guards: LazyGuards) -> None:
        self.fail_closed = False
        self.guards = guards

    def check_output(self, text: str, context: TurnContext) -> Verdict:
        return self.guards.check("output", text)


class GuardrailsRedactor:
    """The store rules on every text before it is written: what they find is redacted."""

    name = "guardrails.store"

    def __init__(self, guards: LazyGuards) -> None:
        self.guards = guards

    def redact(self, text: str) -> str:
        verdict = self.guards.check("store", text)
        return verdict.text if verdict.action == "fix" and verdict.text is not None else text


def make_guardrail_reward(check: GuardrailsOutputCheck) -> Callable[..., list[float]]:
    """TRL's reward-function shape for GRPO: -1.0 where the output guard would fix or refuse
    the completion, 0.0 where it passes or only flags it."""
    context = TurnContext(channel="trainer")

    def guardrail_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        return [-1.0 if check.check_output(completion_text(completion), context).action in ("fix", "refuse")
                else 0.0 for completion in completions]

    return guardrail_reward


def completion_text(completion: Any) -> str:
    """A completion as text: a string, or chat messages ({"role", "content"}) of which the
    assistant's count; content may also be a list of parts ({"type": "text", "text": ...})."""
    if isinstance(completion, str):
        return completion
    messages = [completion] if isinstance(completion, dict) else list(completion)
    texts = []
    for message in messages:
        if message.get("role", "assistant") != "assistant":
            continue
        content = message.get("content") or ""
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        texts.append(str(content))
    return "\n".join(texts)


@hookimpl
def register_input_checks(register: Callable[[Any], None], settings: PluginSettings) -> None:
    guards = shared_guards(settings)
    if guards.config.input:
        register(GuardrailsInputCheck(guards))


@hookimpl
def register_output_checks(register: Callable[[Any], None], settings: PluginSettings) -> None:
    guards = shared_guards(settings)
    if guards.config.output:
        register(GuardrailsOutputCheck(guards))


@hookimpl
def register_reward_functions(register: Callable[[Any], None], settings: PluginSettings) -> None:
    guards = shared_guards(settings)
    if guards.config.output:
        register(make_guardrail_reward(GuardrailsOutputCheck(guards)))


@hookimpl
def register_redactors(register: Callable[[Any], None], settings: PluginSettings) -> None:
    guards = shared_guards(settings)
    if guards.config.store:
        register(GuardrailsRedactor(guards))
