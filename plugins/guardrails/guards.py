"""A Guardrails AI `Guard` built from the rules of one direction, and its outcome as a `Verdict`.

Importing this module imports Guardrails AI (seconds): the plugin does so on first use.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from guardrails import Guard, OnFailAction
from guardrails.settings import settings as guardrails_settings
from guardrails.validator_base import Validator
from guardrails_ai.valid_length import ValidLength

from plugins.guardrails import validators
from plugins.guardrails.config import Rule
from plugins.protocols import Verdict

# fix: Guardrails applies the fix, and the next validator sees the fixed text;
# refuse and flag: Guardrails only records the failure, the verdict does the rest.
ON_FAIL = {"fix": OnFailAction.FIX, "refuse": OnFailAction.NOOP, "flag": OnFailAction.NOOP}

# validator name in the file -> (params, on_fail, system prompt) -> a Guardrails validator, or None to skip
BUILDERS: dict[str, Callable[[dict[str, Any], OnFailAction, str], Validator | None]] = {
    "pii": lambda params, on_fail, _: validators.PersonalData(**params, on_fail=on_fail),
    "prompt_injection": lambda params, on_fail, _: validators.PromptInjection(**params, on_fail=on_fail),
    "ban_list": lambda params, on_fail, _: (validators.BannedWords(**params, on_fail=on_fail)
                                            if params["words"] else None),  # an empty list bans nothing
    "secrets": lambda params, on_fail, _: validators.ApiSecrets(on_fail=on_fail),
    "profanity": lambda params, on_fail, _: validators.Profanity(**params, on_fail=on_fail),
    "max_length": lambda params, on_fail, _: ValidLength(max=params["max"], on_fail=on_fail),
    "prompt_leak": lambda params, on_fail, system_prompt: validators.SystemPromptLeak(
        system_prompt=system_prompt if params["system_prompt"] is None else params["system_prompt"],
        min_words=params["min_words"], on_fail=on_fail),
}


def offline() -> None:
    """No telemetry, no remote validators, no tracing, and validators run one after another.

    Without an rc file Guardrails AI posts traces of every Guard run to its own endpoint.
    `Guard.configure()` re-reads the rc file, so this runs after each Guard is made.
    The sequential validator service (GUARDRAILS_RUN_SYNC) applies fixes one after another
    instead of merging fixes made in parallel, and costs no event loop per call.
    """
    guardrails_settings.rc.enable_metrics = False
    guardrails_settings.rc.use_remote_inferencing = False
    guardrails_settings.use_server = False
    guardrails_settings.disable_tracing = True
    os.environ["GUARDRAILS_RUN_SYNC"] = "true"


class RuleGuard:
    """One Guard running every rule of one direction in one `validate` call."""

    def __init__(self, rules: list[Rule], name: str, system_prompt: str = "") -> None:
        self.guard = Guard(name=name, use_server=False, history_max_length=1)
        self.guard.configure(allow_metrics_collection=False)
        offline()
        built = [(BUILDERS[rule.validator](rule.params, ON_FAIL[rule.on_fail], system_prompt), rule)
                 for rule in rules]
        built = [(validator, rule) for validator, rule in built if validator is not None]
        # the outcome names failed validators by class; the config allows each validator once
        self._rules = {type(validator).__name__: rule for validator, rule in built}
        self.guard.use(*(validator for validator, _ in built))
        self._lock = threading.Lock()

    def check(self, text: str) -> Verdict:
        # The outcome's `validated_output` is None when a fix and a refuse/flag failure meet,
        # so the fixed text comes from the Guard's history, which one call at a time may use.
        # (The validators hold the GIL nearly throughout, so the lock costs little throughput.)
        with self._lock:
            outcome = self.guard.validate(text)
            fixed_text = self.guard.history.last.fixed_output
        failed = [(self._rules[summary.validator_name], summary) for summary in outcome.validation_summaries or []]
        if not failed:
            return Verdict.passed()
        reasons = list(dict.fromkeys(reason for rule, summary in failed for reason in _reasons(rule, summary)))
        refusals = [rule for rule, _ in failed if rule.on_fail == "refuse"]
        if refusals:
            return Verdict("refuse", text=refusals[0].message, reasons=reasons)
        if any(rule.on_fail == "fix" for rule, _ in failed):
            if not isinstance(fixed_text, str):
                raise RuntimeError(f"{self.guard.name}: a fix gave {type(fixed_text).__name__}, not text")
            return Verdict("fix", text=fixed_text, reasons=reasons)
        return Verdict("flag", reasons=reasons)


PACKAGED = {"max_length"}  # Guardrails' own validators, whose spans say nothing countable


def _reasons(rule: Rule, summary: Any) -> list[str]:
    """tuneloop's validators label their error spans ("pii.email"); others get the rule's label."""
    labels = [span.reason for span in summary.error_spans or []]
    if rule.validator in PACKAGED or not labels:
        return [rule.spec.reason]
    return labels
