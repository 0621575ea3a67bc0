"""Plain records shared by every layer: what the store returns and the services work with.

They hold no behaviour and import nothing from the project, so any layer may use them.
"""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

TenantStatus = Literal["active", "suspended"]
TurnStatus = Literal["running", "complete", "failed", "cancelled", "interrupted"]
Role = Literal["user", "assistant"]


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    plan: str
    status: TenantStatus
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    tenant_id: str
    name: str
    prefix: str
    scopes: tuple[str, ...]
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    tenant_id: str
    title: str | None
    agent_type: str
    mode: str
    status: str
    message_count: int
    tokens_used: int
    created_at: datetime
    last_message_at: datetime | None


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    session_id: str
    tenant_id: str
    turn_id: str | None
    role: Role
    content: str
    tokens_in: int
    tokens_out: int
    model: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class HistoryMessage:
    """A message as a session's history lists it, with how its turn ended (or ``running``);
    ``turn_status`` is ``None`` only for a message without a turn."""

    message: Message
    turn_status: TurnStatus | None
    error_code: str | None


@dataclass(frozen=True, slots=True)
class Turn:
    id: str
    session_id: str
    tenant_id: str
    status: TurnStatus
    mode: str
    budget: str
    user_message_id: str
    assistant_message_id: str | None
    tokens_in: int
    tokens_out: int
    model: str | None
    estimated: bool
    error_code: str | None
    first_seq: int | None
    started_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """A CloudEvents 1.0 usage event in OpenMeter's shape."""

    id: str
    type: str
    subject: str
    time: datetime
    data: dict[str, Any] = field(default_factory=dict)
    source: str = "kgents-api"
