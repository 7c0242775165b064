"""Redaction on the way into the store: every free text passes one `Redact` before it is written.

The store cannot know what personal data looks like (plugins do: the guardrails plugin's `store`
rules find emails, phone numbers, cards, IBANs and secrets), so the composition layer hands it
a `Redact`: text in, the text that may be kept out. It fails closed: when the check itself
breaks, `RedactionUnavailable` is raised and the raw text is never written. Feedback writes are
then refused with a 503 that asks for a retry (nothing half-stored, nothing acknowledged);
chat turns store `WITHHELD` in place of the text and go on.
"""

from __future__ import annotations

from collections.abc import Callable

Redact = Callable[[str], str]
WITHHELD = "[withheld: the personal-data check could not run]"


class RedactionUnavailable(RuntimeError):
    """The personal-data check failed; the text was not stored."""


def keep(text: str) -> str:
    """No redaction at all (no plugin provides one)."""
    return text


def redact_or_withhold(redact: Redact, text: str) -> str:
    """For texts that must be stored now (a chat turn): withheld rather than kept raw."""
    try:
        return redact(text)
    except RedactionUnavailable:
        return WITHHELD


def redact_optional(redact: Redact, text: str | None) -> str | None:
    return None if text is None else redact(text)
