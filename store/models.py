"""The store's tables. Every piece of feedback points at a Response, the unit users judge."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import (JSON, CheckConstraint, Column, DateTime, Enum, ForeignKey, Index, Integer, Text,
                        UniqueConstraint, Uuid, text)
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def in_utc(moment: datetime) -> datetime:
    """A stored time as an aware UTC time: SQLite hands times back without their zone."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _when(**kwargs: Any) -> Any:
    return Field(default_factory=utcnow, sa_type=DateTime(timezone=True), **kwargs)


def _enum(kind: type[enum.Enum]) -> Any:
    # Stored as plain strings (no native enum type) so adding a value needs no
    # ALTER TYPE on PostgreSQL and behaves the same on SQLite.
    return Enum(kind, native_enum=False, length=32, values_callable=lambda e: [m.value for m in e])


class Role(str, enum.Enum):
    user = "user"
    reviewer = "reviewer"
    operator = "operator"


STAFF = (Role.reviewer, Role.operator)  # may judge any answer, not only their own chats'


class Channel(str, enum.Enum):
    web = "web"
    slack = "slack"
    api = "api"
    imported = "import"  # `tuneloop import`: feedback another tool collected


class MessageRole(str, enum.Enum):
    system = "system"
    user = "user"
    assistant = "assistant"


class Thumb(str, enum.Enum):
    up = "up"
    down = "down"


class Winner(str, enum.Enum):
    a = "a"
    b = "b"
    tie = "tie"
    both_bad = "both_bad"


class ReleaseState(str, enum.Enum):
    training = "training"
    candidate = "candidate"
    failed_gate = "failed_gate"
    rejected = "rejected"
    canary = "canary"
    active = "active"
    retired = "retired"
    rolled_back = "rolled_back"


class RunStatus(str, enum.Enum):
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    skipped = "skipped"


class User(SQLModel, table=True):
    __tablename__ = "users"
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(max_length=200)
    # Who this is outside tuneloop: "web:<visitor>", "slack:<T>:<U>", "cli:<name>".
    external_id: str = Field(max_length=200, unique=True, index=True)
    role: Role = Field(default=Role.user, sa_type=_enum(Role))
    # sha256 of a random bearer token; tokens are high-entropy, so a slow hash adds nothing.
    token_hash: Optional[str] = Field(default=None, max_length=64, unique=True, index=True)
    created_at: datetime = _when()


class Conversation(SQLModel, table=True):
    __tablename__ = "conversations"
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    channel: Channel = Field(sa_type=_enum(Channel))
    # Channel-specific handle, such as a Slack thread's ts.
    external_ref: Optional[str] = Field(default=None, max_length=200, index=True)
    created_at: datetime = _when()


class Message(SQLModel, table=True):
    __tablename__ = "messages"
    id: Optional[int] = Field(default=None, primary_key=True)
    conversation_id: uuid.UUID = Field(foreign_key="conversations.id", index=True)
    role: MessageRole = Field(sa_type=_enum(MessageRole))
    content: str = Field(sa_type=Text)
    # For an assistant message: the response the conversation went on with.
    # (use_alter: messages and responses point at each other.)
    response_id: Optional[uuid.UUID] = Field(
        default=None,
        sa_column=Column(
            Uuid, ForeignKey("responses.id", use_alter=True, name="fk_messages_response_id"), nullable=True
        ),
    )
    created_at: datetime = _when()


class Release(SQLModel, table=True):
    __tablename__ = "releases"
    # At most one active and one canary release, whatever the code paths do (migration 0006).
    __table_args__ = tuple(
        Index(f"uq_releases_one_{state}", "state", unique=True, sqlite_where=text(f"state = '{state}'"),
              postgresql_where=text(f"state = '{state}'"))
        for state in ("active", "canary")
    )
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, unique=True)
    base_model: str = Field(max_length=500)
    adapter_path: Optional[str] = Field(default=None, max_length=1000)
    checksum: Optional[str] = Field(default=None, max_length=64)
    # The style instruction every answer of this release is written under, appended to the
    # user's last message where only the model reads it (as an A/B contrast's is): what the
    # night adopted from the contrast styles users chose (trainer/styles.py). None: none.
    instruction: Optional[str] = Field(default=None, sa_type=Text)
    state: ReleaseState = Field(sa_type=_enum(ReleaseState), index=True)
    canary_share: float = 0.0
    training_run_id: Optional[int] = Field(
        default=None,
        sa_column=Column(
            Integer, ForeignKey("training_runs.id", use_alter=True, name="fk_releases_training_run_id"), nullable=True
        ),
    )
    report: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = _when()
    updated_at: datetime = _when()


class Response(SQLModel, table=True):
    __tablename__ = "responses"
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    conversation_id: uuid.UUID = Field(foreign_key="conversations.id", index=True)
    # The user message this answers; two responses to one prompt share it.
    prompt_message_id: int = Field(foreign_key="messages.id", index=True)
    release_id: Optional[int] = Field(default=None, foreign_key="releases.id", index=True)
    text: str = Field(sa_type=Text)
    finish_reason: str = Field(default="stop", max_length=20)
    latency_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    params: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # What each plugin decided about this answer.
    trace: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = _when()
    # How unsure the reward model of the release that scored it is whether users would like
    # this answer, in (0, 1]; None until scored. Reviewers see the least sure answers first.
    review_uncertainty: float | None = None
    review_scorer_release_id: int | None = Field(default=None, foreign_key="releases.id")


# The reviewers' queue order (feedback.review): most uncertain first, unscored last, newest
# first. "IS NULL" as the first key puts unscored last in the same way on SQLite (where NULL
# sorts lowest) and PostgreSQL (highest), so one index serves both without NULLS LAST.
Index("ix_responses_review_order", Response.review_uncertainty.is_(None), Response.review_uncertainty.desc(),
      Response.created_at.desc())


class Rating(SQLModel, table=True):
    __tablename__ = "ratings"
    __table_args__ = (
        UniqueConstraint("response_id", "user_id", name="uq_rating_user_response"),
        CheckConstraint("stars IS NULL OR (stars BETWEEN 1 AND 5)", name="ck_rating_stars"),
    )
    id: Optional[int] = Field(default=None, primary_key=True)
    response_id: uuid.UUID = Field(foreign_key="responses.id", index=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    thumb: Optional[Thumb] = Field(default=None, sa_type=_enum(Thumb))
    reason: Optional[str] = Field(default=None, max_length=50)
    comment: Optional[str] = Field(default=None, sa_type=Text)
    stars: Optional[int] = None
    created_at: datetime = _when()
    updated_at: datetime = _when()


class Comparison(SQLModel, table=True):
    __tablename__ = "comparisons"
    __table_args__ = (
        UniqueConstraint("user_id", "response_a_id", "response_b_id", name="uq_comparison_user_pair"),
        CheckConstraint("a_position <> b_position", name="ck_comparison_positions"),
    )
    id: Optional[int] = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    response_a_id: uuid.UUID = Field(foreign_key="responses.id", index=True)
    response_b_id: uuid.UUID = Field(foreign_key="responses.id", index=True)
    # Where each was shown: 0 = first (left), 1 = second (right). Measures position bias.
    a_position: int = 0
    b_position: int = 1
    winner: Winner = Field(sa_type=_enum(Winner))
    # What the pair compares: "sample" (two draws of one release), later "rag", "release", ...
    kind: str = Field(default="sample", max_length=30)
    created_at: datetime = _when()
    updated_at: datetime = _when()


class Correction(SQLModel, table=True):
    __tablename__ = "corrections"
    id: Optional[int] = Field(default=None, primary_key=True)
    response_id: uuid.UUID = Field(foreign_key="responses.id", index=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    text: str = Field(sa_type=Text)
    comment: Optional[str] = Field(default=None, sa_type=Text)
    created_at: datetime = _when()


class TrainingRun(SQLModel, table=True):
    __tablename__ = "training_runs"
    id: Optional[int] = Field(default=None, primary_key=True)
    recipe: str = Field(max_length=30)
    status: RunStatus = Field(default=RunStatus.running, sa_type=_enum(RunStatus))
    base_release_id: Optional[int] = Field(default=None, foreign_key="releases.id")
    config: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    data_counts: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    metrics: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    log: str = Field(default="", sa_type=Text)
    started_at: datetime = _when()
    finished_at: Optional[datetime] = Field(default=None, sa_type=DateTime(timezone=True))


class AnswerFailure(SQLModel, table=True):
    """An answer the engine could not give (every replica down, a crash mid-answer): a canary's
    error rate counts these beside the answers it gave."""

    __tablename__ = "answer_failures"
    id: Optional[int] = Field(default=None, primary_key=True)
    release_id: Optional[int] = Field(default=None, foreign_key="releases.id", index=True)
    conversation_id: uuid.UUID = Field(foreign_key="conversations.id", index=True)
    reason: str = Field(default="", max_length=500)
    created_at: datetime = _when()


class AuditLog(SQLModel, table=True):
    __tablename__ = "audit_log"
    id: Optional[int] = Field(default=None, primary_key=True)
    actor_id: Optional[int] = Field(default=None, foreign_key="users.id")
    actor: str = Field(max_length=200, description="who, as shown to people: a user name or 'system'")
    action: str = Field(max_length=50, index=True)
    target: str = Field(default="", max_length=200)
    details: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = _when()


class IdempotencyRecord(SQLModel, table=True):
    """The stored answer to a request sent with an Idempotency-Key, replayed on retry."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("user_id", "key", name="uq_idempotency_user_key"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id")
    key: str = Field(max_length=200)
    request_hash: str = Field(max_length=64)
    status_code: int
    body: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = _when()


class SlackDelivery(SQLModel, table=True):
    """A Slack event (by its event id) or a post (such as a release announcement) that
    has been handled once: Slack retries and several replicas must not handle it twice.

    An event is an inbox entry: its body is kept, and it is leased to whoever works on it
    (renewed while the work goes on) until `done_at`. A lease that runs out before the work is
    done means its holder died, and the event is handled again (`bot.slack.inbox`); the message
    it had already posted (`posted_ts`) is edited then, not posted twice."""

    __tablename__ = "slack_deliveries"
    key: str = Field(primary_key=True, max_length=200)
    created_at: datetime = _when()
    body: Optional[dict] = Field(default=None, sa_type=JSON)
    lease_until: Optional[datetime] = Field(default=None, sa_type=DateTime(timezone=True))
    done_at: Optional[datetime] = Field(default=None, sa_type=DateTime(timezone=True))
    posted_ts: Optional[str] = Field(default=None, max_length=40)


class JobLock(SQLModel, table=True):
    """A lease on a named job (the nightly training run): one holder at a time across
    processes and machines, taken over only once it has expired (its holder died)."""

    __tablename__ = "job_locks"
    name: str = Field(primary_key=True, max_length=100)
    holder: str = Field(max_length=200)
    acquired_at: datetime = _when()
    expires_at: datetime = Field(sa_type=DateTime(timezone=True))
