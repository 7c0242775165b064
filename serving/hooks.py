"""What the chat path asks of plugins, as serving sees it (plugins implement this).

Serving cannot import plugins (the packages' arrows point the other way), so it states
what it needs here and the app factory hands it an implementation (`plugins.turns`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Checked:
    """A text after the checks: possibly rewritten, possibly refused, and who decided what."""

    text: str
    refusal: str | None = None  # the message the user sees instead
    decisions: list[dict[str, Any]] = field(default_factory=list)  # for the response's trace


@dataclass
class PairPlan:
    """An A/B pair in which the second answer is made another way (such as with retrieval)."""

    kind: str
    messages: list[dict[str, str]]
    trace: dict[str, Any] = field(default_factory=dict)


@dataclass
class Augmented:
    """The one answer made with extra context, and how to credit it."""

    messages: list[dict[str, str]]
    trace: dict[str, Any] = field(default_factory=dict)
    citation: str = ""  # appended to the answer, such as "Sources: install.md"


class TurnHooks(Protocol):
    checks_output: bool  # False lets answers stream without holding text back

    def check_input(self, text: str, channel: str, history: list[dict[str, str]]) -> Checked: ...

    def check_output(self, text: str, channel: str, release: str | None) -> Checked: ...

    def plan_pair(self, prompt: str, messages: list[dict[str, str]]) -> PairPlan | None: ...

    def augment(self, prompt: str, messages: list[dict[str, str]]) -> Augmented | None: ...

    def redact(self, text: str) -> str:
        """What of a text may be stored (feedback/redaction.py); raises RedactionUnavailable."""
        ...


class NoHooks:
    """No plugins: every text passes, no pairs or context are added."""

    checks_output = False

    def check_input(self, text: str, channel: str, history: list[dict[str, str]]) -> Checked:
        return Checked(text)

    def check_output(self, text: str, channel: str, release: str | None) -> Checked:
        return Checked(text)

    def plan_pair(self, prompt: str, messages: list[dict[str, str]]) -> PairPlan | None:
        return None

    def augment(self, prompt: str, messages: list[dict[str, str]]) -> Augmented | None:
        return None

    def redact(self, text: str) -> str:
        return text
