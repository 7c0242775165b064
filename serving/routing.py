"""Which release answers a conversation, as this process serves right now.

The reconciler (serving/reconcile.py) changes the table once an adapter is loaded and
verified; the chat service reads it for every turn and counts the requests in flight
per release, so an old adapter is unloaded only when nothing uses it any more.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass

from serving.pairs import instructed
from store.models import Release


@dataclass(frozen=True)
class ReleaseChoice:
    release_id: int
    name: str
    adapter: str | None  # the engine's adapter name; None serves the base model
    checksum: str | None = None
    adapter_path: str | None = None
    instruction: str | None = None  # the style instruction its answers are written under (Release.instruction)

    def messages(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """What this release's model reads for `messages`: the conversation under its instruction."""
        return instructed(messages, self.instruction)


def adapter_name(release: Release) -> str | None:
    # A versioned name per release and content, so old and new can be loaded side by side
    # and a name never stands for other weights than the ones the release recorded.
    if not release.adapter_path:
        return None
    return f"release-{release.id}-{(release.checksum or 'unverified')[:12]}"


def choice_of(release: Release) -> ReleaseChoice:
    return ReleaseChoice(release.id, release.name, adapter_name(release), release.checksum, release.adapter_path,
                         release.instruction)


def in_canary(conversation_id: uuid.UUID, share: float) -> bool:
    """Sticky per conversation: the same conversation always lands on the same side."""
    return int(conversation_id.hex[:8], 16) / 2**32 < share


class NoActiveRelease(RuntimeError):
    """Serving has no release to answer with yet."""


class LiveReleases:
    def __init__(self) -> None:
        self.active: ReleaseChoice | None = None
        self.canary: ReleaseChoice | None = None
        self.canary_share = 0.0
        self._in_flight: Counter[str | None] = Counter()

    def set(self, active: ReleaseChoice | None, canary: ReleaseChoice | None, share: float) -> None:
        self.active, self.canary, self.canary_share = active, canary, share if canary else 0.0

    def choose(self, conversation_id: uuid.UUID) -> ReleaseChoice:
        if self.canary is not None and in_canary(conversation_id, self.canary_share):
            return self.canary
        if self.active is None:
            raise NoActiveRelease("serving has not loaded an active release yet")
        return self.active

    def begin(self, choice: ReleaseChoice) -> None:
        self._in_flight[choice.adapter] += 1

    def end(self, choice: ReleaseChoice) -> None:
        self._in_flight[choice.adapter] -= 1

    def busy(self, adapter: str) -> bool:
        return self._in_flight[adapter] > 0

    def serving(self) -> set[str]:
        return {c.adapter for c in (self.active, self.canary) if c is not None and c.adapter}
