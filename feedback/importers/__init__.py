"""Feedback collected by other tools, stored as if it had been collected here.

Each reader (`openwebui`, `langfuse`, `trl`) turns its tool's export into `Imported` items: a
prompt, one or two answers, and what a person said about them. `store_imported` writes them
as conversations on the `import` channel, each answer a Response whose trace names its source,
so the datasets, curation and reports see ordinary feedback that can still be told apart.

- Deduplicated: an item's source and id (the other tool's own, or a hash of a row that has none)
  become its conversation's `external_ref`; an item already imported is skipped, so running an
  import twice, or two overlapping exports, stores each item once.
- Scrubbed: every text passes the same `Redact` as a chat turn's; when that check cannot run,
  nothing of the item is stored (it is counted as withheld), never the raw text.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from sqlmodel import Session, select

from feedback.redaction import Redact, RedactionUnavailable
from store import conversations, users
from store.models import Channel, Comparison, Conversation, Correction, MessageRole, Rating, Response, Thumb, Winner

IMPORTED_PAIR = "imported"  # a Comparison's kind when its pair came from elsewhere
MAX_REF = 200  # Conversation.external_ref's width


class ImportFormatError(ValueError):
    """The file is not the export it was read as; the message says what was expected."""


@dataclass
class ImportedAnswer:
    text: str
    model: str | None = None
    thumb: Thumb | None = None
    reason: str | None = None
    comment: str | None = None
    stars: int | None = None  # 1-5

    @property
    def rated(self) -> bool:
        return self.thumb is not None or self.stars is not None or bool(self.comment)


@dataclass
class Imported:
    source: str  # "openwebui", "langfuse", "trl"
    external_id: str  # unique within the source
    user: str  # the person, as the other tool names them
    messages: list[dict[str, str]]  # the conversation up to and including the user's last message
    answers: list[ImportedAnswer]  # one, or an A/B pair
    winner: Winner | None = None  # of a pair
    correction: str | None = None  # the ideal answer, in place of answers[0]
    created_at: datetime | None = None

    def __post_init__(self) -> None:
        if not self.messages or self.messages[-1]["role"] != "user":
            raise ImportFormatError(f"{self.source} item {self.external_id}: the prompt must end with a user message")
        if len(self.answers) not in (1, 2) or (len(self.answers) == 2) != (self.winner is not None):
            raise ImportFormatError(f"{self.source} item {self.external_id}: one rated answer, or a pair with a winner")


def row_id(row: object) -> str:
    """An id for a row that carries none: the same content, the same id."""
    return hashlib.sha256(json.dumps(row, sort_keys=True, default=str).encode()).hexdigest()[:32]


@dataclass
class ImportCounts:
    read: int = 0
    stored: int = 0
    duplicates: int = 0
    withheld: int = 0  # the personal-data check could not run: nothing of the item was stored
    kinds: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.kinds.items())) or "nothing"
        return (f"read {self.read}: stored {self.stored} ({kinds}), {self.duplicates} already imported, "
                f"{self.withheld} withheld")


def store_imported(session: Session, items, redact: Redact) -> ImportCounts:  # noqa: ANN001 (an iterable of Imported)
    counts = ImportCounts()
    seen: set[str] = set()
    for item in items:
        counts.read += 1
        ref = _ref(item)
        if ref in seen or _already(session, ref):
            counts.duplicates += 1
            continue
        seen.add(ref)
        try:
            with session.begin_nested():  # all of an item, or none of it
                for kind in _store(session, item, ref, redact):
                    counts.kinds[kind] += 1
        except RedactionUnavailable:
            counts.withheld += 1
            continue
        counts.stored += 1
    return counts


def _ref(item: Imported) -> str:
    ref = f"{item.source}:{item.external_id}"
    return ref if len(ref) <= MAX_REF else f"{item.source}:{row_id(ref)}"


def _already(session: Session, ref: str) -> bool:
    query = select(Conversation.id).where(Conversation.channel == Channel.imported, Conversation.external_ref == ref)
    return session.exec(query).first() is not None


def _store(session: Session, item: Imported, ref: str, redact: Redact) -> list[str]:
    person = users.get_or_create_user(session, external_id=f"import:{item.source}:{item.user}"[:200],
                                      name=f"{item.user} ({item.source})"[:200])
    conversation = conversations.create_conversation(session, user=person, channel=Channel.imported, external_ref=ref)
    for message in item.messages:
        prompt = conversations.add_message(session, conversation_id=conversation.id,
                                           role=MessageRole(message["role"]), content=redact(message["content"]))
    responses = []
    for index, answer in enumerate(item.answers):
        response = Response(conversation_id=conversation.id, prompt_message_id=prompt.id, text=redact(answer.text),
                            trace={"source": item.source, "external_id": item.external_id, "model": answer.model,
                                   "index": index, "shown_at": index, "channel": Channel.imported.value})
        conversations.add_response(session, response=response)
        responses.append(response)
    conversations.continue_with(session, prompt_message_id=prompt.id, response=responses[0])
    when = {"created_at": item.created_at, "updated_at": item.created_at} if item.created_at else {}
    kinds = []
    for answer, response in zip(item.answers, responses):
        if answer.rated:
            session.add(Rating(response_id=response.id, user_id=person.id, thumb=answer.thumb,
                               reason=answer.reason[:50] if answer.reason else None,
                               comment=redact(answer.comment) if answer.comment else None, stars=answer.stars, **when))
            kinds.append("ratings")
    if item.winner is not None:
        session.add(Comparison(user_id=person.id, response_a_id=responses[0].id, response_b_id=responses[1].id,
                               winner=item.winner, kind=IMPORTED_PAIR, **when))
        kinds.append("comparisons")
    if item.correction is not None:
        session.add(Correction(response_id=responses[0].id, user_id=person.id, text=redact(item.correction),
                               **({"created_at": item.created_at} if item.created_at else {})))
        kinds.append("corrections")
    session.flush()
    return kinds
