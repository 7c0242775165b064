"""Plugins on the chat path: the `serving.hooks.TurnHooks` the app factory hands to serving.

A plugin that raises never breaks a turn: the error is logged and counted and the turn
goes on, unless it is a check that fails closed (`fail_closed`), in which case the turn is refused.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

from prometheus_client import Counter

from feedback.redaction import RedactionUnavailable
from plugins.manager import Plugins
from plugins.protocols import TurnContext, Verdict
from serving.hooks import Augmented, Checked, PairPlan

VERDICTS = Counter("tuneloop_guardrail_verdicts", "What each check decided about a text", ["check", "outcome"])

log = logging.getLogger(__name__)
UNAVAILABLE = "Sorry, I can't answer that right now."
REDACTION_CACHE = 4096  # texts


class PluginHooks:
    def __init__(self, plugins: Plugins, chance: Callable[[], float] = random.random) -> None:
        self.plugins, self.chance = plugins, chance
        self.checks_output = bool(plugins.output_checks)
        self._redacted: dict[str, str] = {}
        self._cache_lock = threading.Lock()

    def check_input(self, text: str, channel: str, history: list[dict[str, str]]) -> Checked:
        context = TurnContext(channel, history)
        return self._run(self.plugins.input_checks, text, lambda check, t: check.check_input(t, context))

    def check_output(self, text: str, channel: str, release: str | None) -> Checked:
        context = TurnContext(channel, release=release)
        return self._run(self.plugins.output_checks, text, lambda check, t: check.check_output(t, context))

    def redact(self, text: str) -> str:
        """Every redactor in turn, before a text is stored; one that raises fails closed
        (`RedactionUnavailable`: the raw text must not be written). Redaction is a pure function
        of the text, so repeats (an API history sent again with each turn) come from a cache."""
        with self._cache_lock:
            if text in self._redacted:
                return self._redacted[text]
        original = text
        for redactor in self.plugins.redactors:
            try:
                text = redactor.redact(text)
            except Exception as error:
                self.plugins.errors[redactor.name] += 1
                log.exception("redactor %s failed; the text is not stored as it was", redactor.name)
                raise RedactionUnavailable(f"{redactor.name} failed: {type(error).__name__}") from error
        with self._cache_lock:
            if len(self._redacted) >= REDACTION_CACHE:
                self._redacted.pop(next(iter(self._redacted)))  # the oldest first
            self._redacted[original] = text
        return text

    def plan_pair(self, prompt: str, messages: list[dict[str, str]]) -> PairPlan | None:
        for alternative in self.plugins.alternatives:
            if alternative.always or self.chance() >= alternative.share:
                continue
            prepared = self._guarded(alternative, lambda: alternative.prepare(prompt, messages))
            if prepared is not None:
                return PairPlan(alternative.name, prepared.messages, prepared.trace)
        return None

    def augment(self, prompt: str, messages: list[dict[str, str]]) -> Augmented | None:
        for alternative in self.plugins.alternatives:
            if alternative.always:
                prepared = self._guarded(alternative, lambda: alternative.prepare(prompt, messages))
                if prepared is not None:
                    return Augmented(prepared.messages, prepared.trace, alternative.citation(prepared.trace))
        return None

    def _run(self, checks: list, text: str, apply: Callable) -> Checked:
        """Each check sees the text as the checks before it left it; the first refusal ends it."""
        decisions = []
        for check in checks:
            try:
                verdict: Verdict = apply(check, text)
            except Exception as error:  # counted and logged; the turn goes on unless this check fails closed
                self.plugins.errors[check.name] += 1
                log.exception("plugin check %s failed", check.name)
                decisions.append({"plugin": check.name, "action": "error", "error": type(error).__name__})
                VERDICTS.labels(check.name, "error").inc()
                if check.fail_closed:
                    return Checked(text, UNAVAILABLE, decisions)
                continue
            decisions.append({"plugin": check.name, "action": verdict.action, "reasons": verdict.reasons})
            VERDICTS.labels(check.name, verdict.action).inc()
            if verdict.action == "refuse":
                return Checked(text, verdict.text or UNAVAILABLE, decisions)
            if verdict.action == "fix" and verdict.text is not None:
                text = verdict.text
        return Checked(text, None, decisions)

    def _guarded(self, plugin, work: Callable):  # noqa: ANN001, ANN202
        try:
            return work()
        except Exception:
            self.plugins.errors[plugin.name] += 1
            log.exception("plugin %s failed; the turn goes on without it", plugin.name)
            return None
