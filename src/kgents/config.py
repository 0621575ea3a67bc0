"""Settings: built once at start-up from the environment (prefix ``KGENTS_``) and passed down.

Nothing reads the environment after this; tests build as many ``Settings`` as they like.
"""

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

BUDGET_TIERS = ("dormant", "whisper", "dialogue", "deep")


class Budget(StrEnum):
    """How much the model may say: ``dormant`` makes no LLM call at all."""

    dormant = "dormant"
    whisper = "whisper"
    dialogue = "dialogue"
    deep = "deep"


class PlanConfig(BaseModel):
    """Limits of one plan. ``None`` means unlimited."""

    tokens_per_month: int | None = Field(ge=0)
    requests_per_minute: int = Field(ge=1)
    max_budget: Budget
    streams_per_key: int = Field(default=10, ge=1)
    """Streams (SSE followers, streamed replies) one API key may hold open at once."""
    streams_per_tenant: int = Field(default=25, ge=1)
    """Streams all keys of one tenant may hold open at once."""


DEFAULT_PLANS: dict[str, PlanConfig] = {
    "free": PlanConfig(
        tokens_per_month=10_000,
        requests_per_minute=60,
        max_budget=Budget.whisper,
        streams_per_key=5,
        streams_per_tenant=10,
    ),
    "pro": PlanConfig(
        tokens_per_month=100_000,
        requests_per_minute=600,
        max_budget=Budget.dialogue,
        streams_per_key=20,
        streams_per_tenant=100,
    ),
    "enterprise": PlanConfig(
        tokens_per_month=1_000_000,
        requests_per_minute=6_000,
        max_budget=Budget.deep,
        streams_per_key=200,
        streams_per_tenant=1_000,
    ),
    "custom": PlanConfig(
        tokens_per_month=None,
        requests_per_minute=10_000,
        max_budget=Budget.deep,
        streams_per_key=1_000,
        streams_per_tenant=5_000,
    ),
}


class Settings(BaseSettings):
    """Every setting of the platform. Each field's env var is ``KGENTS_<FIELD>`` unless noted."""

    model_config = SettingsConfigDict(env_prefix="KGENTS_", extra="ignore")

    data_dir: Path = Field(
        default=Path(".kgents"),
        description="Directory for the SQLite database, the JetStream store and the admin token.",
    )
    host: str = Field(default="127.0.0.1", description="Address the API binds to.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port the API binds to.")
    workers: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = Field(
        default=1,
        description="API processes sharing the host and port (``kgents serve --workers``); "
        "``auto``: one per CPU the process may run on, at most a container's CPU limit.",
    )
    database_url: str | None = Field(
        default=None,
        description="postgresql://… or sqlite:///…; default: SQLite file in the data dir.",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token of the admin API; generated into the data dir if unset.",
    )
    nats_url: str | None = Field(
        default=None,
        description="NATS server URL(s), comma separated; default: embedded nats-server.",
    )
    nats_replicas: int = Field(
        default=1,
        ge=1,
        le=5,
        description="JetStream stream replicas: 1 for one server, 3 for a 3-node cluster.",
    )
    events_max_bytes: int = Field(
        default=1 << 30,
        ge=1 << 20,
        description="Size limit of the kgent-events stream in bytes (1 GiB); the oldest "
        "session events are discarded first beyond it.",
    )
    nats_prefix: str = Field(
        default="",
        pattern=r"^[A-Za-z0-9_-]{0,32}$",
        description="Prefix of the NATS subjects, streams and durable consumer, so that several "
        "deployments can share one NATS cluster (empty: none).",
    )
    nats_failover_seconds: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="How long a publish is sent again (same message id) through a NATS leader "
        "election or reconnect before the turn is stored as failed.",
    )
    nats_creds: Path | None = Field(
        default=None,
        description="A NATS .creds file (decentralized JWT auth) for KGENTS_NATS_URL's servers. "
        "A user and password, or a token, go in the URL itself (nats://user:pass@host:4222).",
    )
    nats_tls_ca: Path | None = Field(
        default=None, description="CA certificate (PEM) that signs the NATS servers' certificates."
    )
    nats_tls_cert: Path | None = Field(
        default=None, description="Client certificate (PEM) for NATS servers that verify clients."
    )
    nats_tls_key: Path | None = Field(
        default=None, description="Private key (PEM) of KGENTS_NATS_TLS_CERT."
    )
    llm_provider: Literal["demo", "openai", "anthropic"] = Field(
        default="demo", description="Which LLM provider generates replies."
    )
    llm_model: str | None = Field(
        default=None,
        description="Model name for openai/anthropic (default gpt-4o-mini / claude-sonnet-4-6).",
    )
    llm_timeout_seconds: float = Field(
        default=60.0, gt=0, description="Timeout of one provider request."
    )
    demo_token_delay_ms: int = Field(
        default=15, ge=0, description="Delay between chunks of the demo provider."
    )
    openai_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENAI_API_KEY", "KGENTS_OPENAI_API_KEY"),
        description="API key of the openai provider (env OPENAI_API_KEY).",
    )
    openai_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENAI_BASE_URL", "KGENTS_OPENAI_BASE_URL"),
        description="Base URL of any OpenAI-compatible server (env OPENAI_BASE_URL).",
    )
    anthropic_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("ANTHROPIC_API_KEY", "KGENTS_ANTHROPIC_API_KEY"),
        description="API key of the anthropic provider (env ANTHROPIC_API_KEY).",
    )
    anthropic_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("ANTHROPIC_BASE_URL", "KGENTS_ANTHROPIC_BASE_URL"),
        description="Base URL of the Anthropic API (env ANTHROPIC_BASE_URL).",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated origins allowed by CORS; empty = off."
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Largest request body.")
    max_header_bytes: int = Field(
        default=16_384,
        ge=1024,
        description="Largest request head (request line and headers); 400 above.",
    )
    request_head_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Time a connection has to send each request head (from connecting or the "
        "previous response; also the idle keep-alive time); 408 and disconnected after.",
    )
    request_body_timeout_seconds: float = Field(
        default=15.0,
        gt=0,
        description="Time a request has to send its whole body; 408 and disconnected after.",
    )
    max_connections: int = Field(
        default=1_000,
        ge=1,
        description="Most connections (and requests) one process serves at once; 503 beyond.",
    )
    max_message_chars: int = Field(default=32_000, ge=1, description="Longest user message.")
    stream_buffer_size: int = Field(
        default=64, ge=1, description="Bound of every in-process stream buffer."
    )
    turn_lease_seconds: float = Field(
        default=15.0,
        gt=0,
        description="A running turn not renewed for this long was left by a dead process.",
    )
    shutdown_grace_seconds: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="On SIGTERM, how long running turns may go on once open requests have "
        "closed (or had 15 s); a turn still running then is stored as cancelled.",
    )
    ws_send_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="How long a WebSocket frame may wait for a client that does not read "
        "(the connection's send buffer full) before the connection is closed (1008).",
    )
    api_key_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="How long a process trusts an API key lookup (0: never): a key revoked or "
        "a tenant suspended by another process is refused here within this time. Open streams "
        "re-check their key this often (at least every second).",
    )
    plans: dict[str, PlanConfig] = Field(
        default_factory=lambda: dict(DEFAULT_PLANS),
        description="Plans as JSON, replacing the defaults (free, pro, enterprise, custom).",
    )
    meters_file: Path | None = Field(
        default=None, description="YAML file of meters in OpenMeter's format."
    )
    prune_interval_seconds: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        description="How often each process removes relayed outbox rows and ended rate-limit "
        "windows from the database (in batches of KGENTS_PRUNE_BATCH_ROWS).",
    )
    prune_batch_rows: int = Field(
        default=500,
        ge=1,
        le=100_000,
        description="Rows removed per pruning transaction (small, so writers never wait long).",
    )
    outbox_sent_retention_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="How long a relayed usage event stays in the outbox (its own dedupe of a "
        "client's retry; the meter store dedupes for good) before it is pruned.",
    )
    metering_ack_wait_seconds: float = Field(
        default=30.0,
        ge=1,
        le=3600,
        description="Ack wait of the metering consumer: usage events a crashed process had "
        "fetched but not acknowledged are delivered again after this long.",
    )
    meter_query_max_windows: int = Field(
        default=10_000,
        ge=1,
        description="Most windows one meter query with windowSize may span (400 above): "
        "about 6.9 days of MINUTE windows, 13.7 months of HOUR windows.",
    )
    meter_query_max_span_days: int = Field(
        default=3_660,
        ge=1,
        description="Longest range, in days, of one meter query with windowSize (400 above): "
        "bounds the time-zone work of DAY and MONTH windows.",
    )
    openmeter_url: str | None = Field(default=None, description="Forward usage to this OpenMeter.")
    openmeter_token: SecretStr | None = Field(default=None, description="Token for OpenMeter.")
    openmeter_timeout_seconds: float = Field(
        default=5.0, gt=0, le=60, description="Timeout of one request forwarding to OpenMeter."
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @property
    def database_path(self) -> Path:
        return self.data_dir / "kgents.db"

    @property
    def admin_token_path(self) -> Path:
        return self.data_dir / "admin-token"
