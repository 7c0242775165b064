"""Personal data: every free text through the same redaction serving uses (fails closed)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from feedback.export import Row
from trainer.curation.base import StepReport


def default_output_check(settings: Any = None) -> Any:
    """The built-in guardrails plugin's output check (the settings' file, else the bundled one)."""
    from plugins.guardrails.plugin import GuardrailsOutputCheck, shared_guards

    return GuardrailsOutputCheck(shared_guards(settings))


def default_redactor(settings: Any = None) -> Callable[[str], str]:
    """The built-in guardrails plugin's store redaction (the settings' file, else the bundled one):
    what every stored text already passed, applied again to what is trained on."""
    from plugins.guardrails.plugin import GuardrailsRedactor, shared_guards

    return GuardrailsRedactor(shared_guards(settings)).redact


def _as_text_check(check: Any) -> Callable[[str], str | None]:
    """A text -> text function; None means the text may not be kept at all.

    `check` is the plugin manager's `Plugins` (the same redaction every stored text passes,
    `PluginHooks.redact`; if it cannot run, the row is not kept: fail closed), one
    `OutputCheck`, or already a text -> text callable."""
    if hasattr(check, "redactors"):
        from feedback.redaction import RedactionUnavailable
        from plugins.turns import PluginHooks

        hooks = PluginHooks(check)

        def redact(text: str) -> str | None:
            try:
                return hooks.redact(text)
            except RedactionUnavailable:
                return None

        return redact
    if not hasattr(check, "check_output"):
        def run_callable(text: str) -> str | None:
            try:
                return check(text)
            except Exception:  # a check that cannot tell keeps nothing raw: the row goes
                return None

        return run_callable
    from plugins.protocols import TurnContext

    context = TurnContext(channel="trainer")

    def run(text: str) -> str | None:
        verdict = check.check_output(text, context)
        if verdict.action == "refuse":
            return None
        return verdict.text if verdict.action == "fix" and verdict.text is not None else text

    return run


class _Refused(Exception):
    pass


def scrub_personal_data(rows: Sequence[Row], check: Any = None) -> tuple[list[Row], StepReport]:
    """Every text (prompt messages, answers, `prompt_text`) through the store's redaction (the
    plugins', an `OutputCheck`, or a plain text -> text callable; default: the built-in guardrails').
    Rows rewritten are counted as changed; a row the check refuses outright is removed."""
    run = _as_text_check(check if check is not None else default_redactor())
    cache: dict[str, str | None] = {}

    def fix(text: str) -> str:
        if text not in cache:
            cache[text] = run(text)
        if cache[text] is None:
            raise _Refused
        return cache[text]

    kept, changed, refused = [], 0, 0
    for row in rows:
        try:
            data = _scrub_value(row.data, fix)
            new = replace(row, data=data, prompt_text=fix(row.prompt_text))
        except _Refused:
            refused += 1
            continue
        changed += data != row.data or new.prompt_text != row.prompt_text
        kept.append(new)
    return kept, StepReport("personal_data", refused, {"changed": changed, "refused": refused}, changed)


def _scrub_value(value: Any, fix: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return fix(value)
    if isinstance(value, list):
        return [_scrub_value(v, fix) for v in value]
    if isinstance(value, dict):
        return {k: (_scrub_value(v, fix) if k in ("prompt", "chosen", "rejected", "completion", "messages", "content")
                    else v) for k, v in value.items()}
    return value
