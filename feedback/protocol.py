"""Request and response bodies of the feedback API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from store.models import Thumb, Winner, in_utc

# Why a thumbs-down: a short fixed list, so reasons can be counted.
DOWN_REASONS = ("incorrect", "unhelpful", "unsafe", "off_topic", "too_long", "too_short", "other")


# Every timestamp the API returns is an RFC 3339 date-time with its offset, as the schema says.
UtcDatetime = Annotated[datetime, AfterValidator(in_utc)]


class ErrorOut(BaseModel):
    """Every error outside the OpenAI API: what went wrong and what to fix."""

    detail: str
    errors: list[dict] | None = Field(default=None, description="a validation error's parts, field by field")


WHY = {
    400: "the request asks for something this server does not do",
    401: "no valid bearer token",
    403: "the caller's role may not do this",
    404: "no such thing, or not the caller's",
    409: "conflicts with the current state (or an Idempotency-Key still in use)",
    413: "the request body is over the size limit",
    422: "the request is malformed: the message says which field and why",
    429: "too many requests from this client: wait for Retry-After seconds",
    503: "not ready or not stored: retry (with the same Idempotency-Key)",
}


def error_responses(*statuses: int) -> dict[int, dict]:
    """The statuses a route answers besides success, for the OpenAPI schema (FastAPI `responses=`)."""
    return {status: {"model": ErrorOut, "description": WHY[status]} for status in statuses}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently dropped


class RatingIn(_Strict):
    # What the validator below asks, in the schema's words, so clients and fuzzers see it too.
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "anyOf": [{"required": [name], "properties": {name: {"not": {"type": "null"}}}}
                  for name in ("thumb", "stars", "comment")],
        "dependentSchemas": {"reason": {"required": ["thumb"], "properties": {"thumb": {"const": "down"}}}},
    })

    response_id: uuid.UUID
    thumb: Thumb | None = None
    reason: Literal[DOWN_REASONS] | None = None  # type: ignore[valid-type]
    comment: str | None = Field(default=None, max_length=2000)
    stars: int | None = Field(default=None, ge=1, le=5)

    @model_validator(mode="after")
    def _something_to_store(self) -> "RatingIn":
        if self.thumb is None and self.stars is None and self.comment is None:
            raise ValueError("give at least one of thumb, stars or comment")
        if self.reason is not None and self.thumb != Thumb.down:
            raise ValueError("a reason goes with thumb 'down' only")
        return self


class RatingOut(BaseModel):
    id: int
    response_id: uuid.UUID
    thumb: Thumb | None
    reason: str | None
    comment: str | None
    stars: int | None
    updated_at: UtcDatetime


class ComparisonIn(_Strict):
    response_a_id: uuid.UUID
    response_b_id: uuid.UUID
    winner: Winner
    a_position: Literal[0, 1] = Field(default=0, description="where answer A was shown: 0 first/left, 1 second/right")

    @model_validator(mode="after")
    def _two_different(self) -> "ComparisonIn":
        if self.response_a_id == self.response_b_id:
            raise ValueError("response_a_id and response_b_id must differ")
        return self


class ComparisonOut(BaseModel):
    id: int
    response_a_id: uuid.UUID
    response_b_id: uuid.UUID
    winner: Winner
    a_position: int
    b_position: int
    kind: str
    updated_at: UtcDatetime


class CorrectionIn(_Strict):
    response_id: uuid.UUID
    text: str = Field(min_length=1, max_length=16_000)
    comment: str | None = Field(default=None, max_length=2000)


class CorrectionOut(BaseModel):
    id: int
    response_id: uuid.UUID
    text: str
    comment: str | None
    created_at: UtcDatetime
