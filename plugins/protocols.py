"""The objects plugins register, and what the chat path hands them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Action = Literal["pass", "fix", "flag", "refuse"]


@dataclass
class Verdict:
    """A check's decision. `fix` carries the rewritten text; `refuse` the message the user sees."""

    action: Action = "pass"
    text: str | None = None
    reasons: list[str] = field(default_factory=list)  # short, countable: "pii.card", "ban_list", ...

    @classmethod
    def passed(cls) -> Verdict:
        return cls("pass")


@dataclass
class TurnContext:
    """What a check may want to know about the turn it looks at."""

    channel: str  # web, slack, api
    history: list[dict[str, str]] = field(default_factory=list)  # the messages before this one
    release: str | None = None  # the release answering (output checks only)


@runtime_checkable
class InputCheck(Protocol):
    name: str
    # When it raises: refuse the turn (True) or log, count and go on (False); plugins/turns.py
    # honours it, and names in TUNELOOP_PLUGINS_FAIL_CLOSED set it (plugins/manager.py).
    fail_closed: bool

    def check_input(self, text: str, context: TurnContext) -> Verdict: ...


@runtime_checkable
class OutputCheck(Protocol):
    name: str
    fail_closed: bool

    def check_output(self, text: str, context: TurnContext) -> Verdict: ...


@runtime_checkable
class Redactor(Protocol):
    """Rewrites a text before it is stored (personal data, secrets): what may be kept of it.
    Raising means it could not tell, and the text is not stored raw (feedback/redaction.py)."""

    name: str

    def redact(self, text: str) -> str: ...


@dataclass
class AlternativeTurn:
    """How an alternative answers one prompt: the messages to generate from, and what to
    keep in the answer's trace (such as the retrieved chunks' sources)."""

    messages: list[dict[str, str]]
    trace: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Alternative(Protocol):
    """Another way to answer. One that raises sits the turn out (logged and counted): the
    model's own answer is still there, so there is nothing to fail closed."""

    name: str  # stored as the A/B pair's kind, such as "rag"
    share: float  # of turns on which this pair is shown
    always: bool  # instead of pairs: every turn's one answer is made this way, and cited

    def prepare(self, prompt: str, messages: list[dict[str, str]]) -> AlternativeTurn | None:
        """The alternative's messages for this turn, or None to sit this turn out."""

    def citation(self, trace: dict[str, Any]) -> str:
        """What an `always` answer made from `prepare`'s turn (its trace) ends with; "" for nothing."""


@dataclass
class FeedbackEvent:
    kind: Literal["rating", "comparison", "correction"]
    response_ids: list[str]
    user_id: int
    details: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class FeedbackListener(Protocol):
    """Hears of feedback once it is stored; one that raises is logged and counted (the
    feedback is already kept, so there is nothing to fail closed)."""

    name: str

    def on_feedback(self, event: FeedbackEvent) -> None: ...


class RewardFunction(Protocol):
    """TRL's reward-function shape (GRPO): one float per completion. `__name__` names it in logs."""

    __name__: str

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]: ...
