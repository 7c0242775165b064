"""The one settings class: every knob an operator sets, read from TUNELOOP_* and .env."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"
# Values that are examples, not secrets: refused in production.
PLACEHOLDERS = {"changeme", "change-me", "secret", "password", "tuneloop", "postgres", "test", "example", "xxx"}


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
    max_choices: int = Field(default=4, ge=1, le=16, description="the most answers (`n`) one API request may ask for")
    temperature: float = Field(default=0.7, ge=0.0, le=2.0, description="widget and Slack sampling temperature")
    max_batch_size: int = Field(default=16, ge=1, le=64)
    # Which engine generates: in-process transformers, or vLLM servers (serving/vllm_engine.py).
    # auto: vLLM where it is installed (`make vllm`) or servers are given, else in-process; on
    # 2 cores vLLM's CPU build answered 8 chats at once 4 times faster (bench/serving.py).
    engine: Literal["auto", "transformers", "vllm"] = "auto"
    vllm_urls: list[str] = Field(default_factory=list, description="vLLM servers (JSON list); none: tuneloop "
                                                                   "starts and supervises a local one")
    vllm_api_key: str | None = Field(default=None, description="the servers' --api-key, if they have one")
    vllm_timeout_s: float = Field(default=120.0, gt=0, description="longest wait for a vLLM answer")
    vllm_python: Path | None = Field(default=None, description="the local server's Python; default .venv-vllm")
    vllm_max_loras: int = Field(default=2, ge=1, description="adapters a local server holds at once")
    vllm_max_lora_rank: int = Field(default=16, ge=1, description="highest LoRA rank a local server takes")
    vllm_max_model_len: int = Field(default=2048, ge=128, description="a local server's context length")
    # The nightly evaluation's answers: auto generates where serving does (vLLM's CPU build gave
    # 2.5-4x the in-process engine's throughput here, bench/serving.py --engine vllm); where vLLM
    # cannot start or load the adapters, it answers in-process.
    eval_engine: Literal["auto", "transformers", "vllm"] = "auto"
    batch_wait_ms: float = Field(default=5.0, ge=0, description="how long the batcher waits for company")

    reload_interval: float = Field(default=0.5, gt=0, description="seconds between checks for a new release")
    review_scoring: bool = Field(default=True, description="score live answers with the active release's reward "
                                                           "model, least sure first in the reviewers' queue")

    # The nightly job and its gate.
    nightly_at: str | None = Field(default=None, pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="HH:MM local time")
    # Gate thresholds (trainer/gate.py explains each default). A minimum above 1 or a maximum
    # of 0 makes that check fail every run, which is how an operator forces manual review.
    gate_min_pair_accuracy: float = Field(default=0.55, ge=0, le=1, description="DPO implicit reward, held out")
    gate_min_win_rate: float = Field(default=0.5, ge=0, le=1.01, description="primary judge against the active")
    gate_win_rate_bound: Literal["lower", "point"] = Field(
        default="lower", description="the win rate's 95% lower bound must reach the minimum, or the rate itself")
    gate_min_reward_pair_accuracy: float = Field(default=0.55, ge=0, le=1.01,
                                                 description="reward model's held-out pair accuracy")
    gate_max_golden_drop: float = Field(default=0.05, ge=0, le=1, description="golden-set ROUGE-L F drop")
    gate_max_violation_increase: float = Field(default=0.02, ge=0, le=1,
                                               description="rise in the share of answers guardrails act on")
    gate_max_length_drift: float = Field(default=0.5, ge=0, description="|candidate/active mean words - 1|")
    gate_max_kl: float = Field(default=1.0, ge=0, description="KL(candidate || active), nats per answer token")
    judge: str | None = Field(default=None, description="module:function judging candidate against active")

    host: str = "127.0.0.1"
    port: int = 8000
    ab_share: float = Field(default=0.2, ge=0.0, le=1.0, description="share of widget turns shown as an A/B pair")
    ab_strategy: Literal["contrast", "samples"] = Field(
        default="contrast", description="an A/B pair's second answer: a style contrast (serving/pairs.py) or a "
                                        "second plain sample")
    allow_anonymous_api: bool = Field(default=True, description="OpenAI API without a tuneloop token")
    # Per client address, in the `limits` library's notation; empty switches one off.
    rate_limit_sessions: str = Field(default="30/minute", description="new anonymous sessions (POST /api/session)")
    rate_limit_chat: str = Field(default="120/minute", description="chat turns (widget and OpenAI API)")
    rate_limit_storage: str = Field(default="memory://", description="memory:// (one process) or redis://host:6379")
    allowed_origins: list[str] = Field(default_factory=lambda: ["*"],
                                       description="pages that may embed the widget (CORS), as JSON")
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    worker_threads: int = Field(default=8, ge=1, le=200, description="threads for database-bound endpoints")

    # Plugins: built-ins ("guardrails", "rag") and entry points of the group "tuneloop".
    plugins_disabled: list[str] = Field(default_factory=list, description="plugin names not to load")
    plugins_fail_closed: list[str] = Field(default_factory=list,
                                           description="checks that refuse the turn when they raise")
    guardrails_config: Path | None = Field(default=None, description="YAML file; empty uses the bundled one")
    rag_index_dir: Path | None = Field(default=None, description="the vector store; empty means <data dir>/rag")
    rag_share: float = Field(default=0.2, ge=0.0, le=1.0, description="share of turns shown as RAG vs model alone")
    rag_always: bool = Field(default=False, description="answer every turn with retrieved context, citing sources")
    rag_top_k: int = Field(default=4, ge=1, le=20)

    # Where people can reach this service, for links in Slack messages (release reports).
    public_url: str = Field(default="", description="base URL, such as https://tuneloop.example.com")
    # The review queue in the browser: the share of items handed to two reviewers (their agreement).
    review_overlap_share: float = Field(default=0.1, ge=0.0, le=1.0,
                                        description="share of review items given to two reviewers")
    # GET /metrics and the per-request latency it needs (tuneloop/metrics.py).
    metrics: bool = Field(default=True, description="serve Prometheus metrics at /metrics")
    # Logs: text, or one JSON object per line; every line names its request (tuneloop/observability.py).
    log_format: Literal["text", "json"] = Field(default="text", description="text or json lines")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="the least kept")
    # Signs the workspace's session cookies; the same on every replica. Empty: one is made once
    # and kept in DATA_DIR/session-secret.
    session_secret: str | None = Field(default=None, description="signs the reviewers' and operators' sessions")

    # Canaries that judge themselves (serving/canary.py, feedback/canary.py): a sequential test on
    # the canary's live evidence, looked at every few seconds; worse -> rolled back; better ->
    # promoted (promote=auto) or put to an operator (ask). Off: evidence is shown, not acted on.
    canary_decide: bool = Field(default=True, description="roll back / promote canaries on their evidence")
    canary_promote: Literal["auto", "ask"] = Field(default="ask", description="a clear win promotes, or asks")
    canary_false_rollback: float = Field(default=0.05, gt=0, lt=0.5, description="error rate of a rollback")
    canary_false_promotion: float = Field(default=0.05, gt=0, lt=0.5, description="error rate of a promotion")
    canary_min_answers: int = Field(default=30, ge=5, description="per release, before a rate can decide")
    canary_max_choices: int = Field(default=1000, ge=10, description="choices before calling it inconclusive")
    canary_rollback_metrics: list[Literal["choices", "thumbs_down", "stars", "guardrails", "errors"]] = Field(
        default_factory=lambda: ["choices", "thumbs_down", "stars", "guardrails", "errors"],
        description="metrics that alone can roll a canary back")
    canary_check_interval_s: float = Field(default=5.0, gt=0, description="seconds between looks at the canary")
    canary_compare_share: float = Field(default=0.2, ge=0.0, le=1.0,
                                        description="share of widget/Slack turns shown canary-vs-active")

    # Slack: off unless a bot token and a signing secret (HTTP mode) or an app token
    # (Socket Mode) are set. Slack ids in the role lists get that role on first contact.
    slack_bot_token: str = Field(default="", description="xoxb-... bot token")
    slack_signing_secret: str = Field(default="", description="verifies requests to /slack/events")
    slack_app_token: str = Field(default="", description="xapp-... app-level token, for Socket Mode")
    slack_socket_mode: bool = Field(default=False, description="connect out over Socket Mode instead of HTTP")
    slack_api_url: str = Field(default="https://slack.com/api/", description="Slack's Web API (tests point it elsewhere)")
    slack_operators_channel: str = Field(default="", description="channel id where candidate releases are announced")
    slack_reviewers: list[str] = Field(default_factory=list, description="Slack user ids with the reviewer role")
    slack_operators: list[str] = Field(default_factory=list, description="Slack user ids with the operator role")
    slack_canary_share: float = Field(default=0.2, gt=0, lt=1, description="share for 'Approve as canary'")
    slack_announce_interval: float = Field(default=5.0, gt=0, description="seconds between checks for candidates")

    @property
    def slack_enabled(self) -> bool:
        if self.slack_socket_mode:
            return bool(self.slack_bot_token and self.slack_app_token)
        return bool(self.slack_bot_token and self.slack_signing_secret)

    @model_validator(mode="after")
    def _slack_tokens_fit(self) -> "Settings":
        """A half-configured Slack app fails at start-up with what to set, not at the first event."""
        for name, prefix in (("slack_bot_token", "xoxb-"), ("slack_app_token", "xapp-")):
            value = getattr(self, name)
            if value and not value.startswith(prefix):
                raise ValueError(f"TUNELOOP_{name.upper()} must start with {prefix!r}")
        # A bot token needs a signing secret (HTTP mode) or an app token (Socket Mode). Other
        # commands (`tuneloop releases`, the nightly job) share these settings without
        # TUNELOOP_SLACK_SOCKET_MODE, so an app token alone is enough here.
        if self.slack_bot_token and not (self.slack_signing_secret or self.slack_app_token):
            needed = "TUNELOOP_SLACK_APP_TOKEN" if self.slack_socket_mode else "TUNELOOP_SLACK_SIGNING_SECRET"
            raise ValueError(f"TUNELOOP_SLACK_BOT_TOKEN is set but {needed} is not: set it, or unset the bot token")
        if self.slack_socket_mode and self.slack_bot_token and not self.slack_app_token:
            raise ValueError("TUNELOOP_SLACK_SOCKET_MODE needs TUNELOOP_SLACK_APP_TOKEN (xapp-...)")
        return self

    @model_validator(mode="after")
    def _rate_limits_parse(self) -> "Settings":
        from limits import parse

        for name in ("rate_limit_sessions", "rate_limit_chat"):
            rule = getattr(self, name)
            try:
                if rule:
                    parse(rule)
            except ValueError as error:
                raise ValueError(f"TUNELOOP_{name.upper()} must read like '30/minute', not {rule!r}") from error
        return self

    @model_validator(mode="after")
    def _production_is_not_a_demo(self) -> "Settings":
        """In production: no placeholder secrets, and an anonymous API only when asked for by name."""
        if self.environment != "production":
            return self
        problems = [f"{what} is a placeholder ({value!r}); set a real one" for what, value in self._secrets()
                    if value and value.lower() in PLACEHOLDERS]
        if self.allow_anonymous_api and "allow_anonymous_api" not in self.model_fields_set:
            problems.append("the OpenAI API would take anyone: set TUNELOOP_ALLOW_ANONYMOUS_API=false, "
                            "or =true if that is what you want")
        if problems:
            raise ValueError("TUNELOOP_ENVIRONMENT=production: " + "; ".join(problems))
        return self

    def _secrets(self) -> list[tuple[str, str]]:
        from sqlalchemy.engine import make_url

        password = make_url(self.database_url).password if self.database_url else None
        return [("the database password in TUNELOOP_DATABASE_URL", password or ""),
                ("TUNELOOP_SLACK_SIGNING_SECRET", self.slack_signing_secret)]

    @model_validator(mode="after")
    def _default_database(self) -> "Settings":
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'tuneloop.db').as_posix()}"
        return self

    @property
    def rag_dir(self) -> Path:
        return self.rag_index_dir or self.data_dir / "rag"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"


@lru_cache
def get_settings() -> Settings:
    return Settings()
