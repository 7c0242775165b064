"""Request and response bodies of the feedback API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from feedback.models import Thumb, Winner

# Why a thumbs-down: a short fixed list, so reasons can be counted.
DOWN_REASONS = ("incorrect", "unhelpful", "unsafe", "off_topic", "too_long", "too_short", "other")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently dropped


class RatingIn(_Strict):
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
    updated_at: datetime


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
    updated_at: datetime


class CorrectionIn(_Strict):
    response_id: uuid.UUID
    text: str = Field(min_length=1, max_length=16_000)
    comment: str | None = Field(default=None, max_length=2000)


class CorrectionOut(BaseModel):
    id: int
    response_id: uuid.UUID
    text: str
    comment: str | None
    created_at: datetime
