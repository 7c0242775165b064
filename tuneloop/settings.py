"""The one settings class: every knob an operator sets, read from TUNELOOP_* and .env."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNELOOP_", env_file=".env", extra="ignore")

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path("var")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty means a SQLite file in the data dir")

    # The chat model: the embedded default, a Hugging Face id, or a local folder.
    model: str = EMBEDDED_MODEL
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int = Field(default=0, ge=0, description="CPU threads for generation; 0 keeps torch's default")
    system_prompt: str = "You are a helpful, concise assistant."
    max_tokens: int = Field(default=256, ge=1, le=4096, description="default answer length cap")
    temperature: float = Field(default=0.7, ge=0.0, le=2.0, description="widget and Slack sampling temperature")
    max_batch_size: int = Field(default=16, ge=1, le=64)
    batch_wait_ms: float = Field(default=5.0, ge=0, description="how long the batcher waits for company")

    reload_interval: float = Field(default=0.5, gt=0, description="seconds between checks for a new release")

    # The nightly job and its gate.
    nightly_at: str | None = Field(default=None, pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="HH:MM local time")
    gate_min_pair_accuracy: float = Field(default=0.55, ge=0, le=1)
    gate_min_win_rate: float = Field(default=0.5, ge=0, le=1.01)
    judge: str | None = Field(default=None, description="module:function judging candidate against active")

    host: str = "127.0.0.1"
    port: int = 8000
    ab_share: float = Field(default=0.2, ge=0.0, le=1.0, description="share of widget turns shown as an A/B pair")
    allow_anonymous_api: bool = Field(default=True, description="OpenAI API without a bearer token")
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    worker_threads: int = Field(default=8, ge=1, le=200, description="threads for database-bound endpoints")

    @model_validator(mode="after")
    def _default_database(self) -> "Settings":
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'tuneloop.db').as_posix()}"
        return self

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"


@lru_cache
def get_settings() -> Settings:
    return Settings()
