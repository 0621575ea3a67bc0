"""Request and response models of the HTTP API, in families (Create / Update / Public / plural)."""

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from kgents.config import Budget
from kgents.records import ApiKey, Message, Session, Tenant

Mode = Literal["reflect", "advise", "challenge", "explore"]
Name = Annotated[str, Field(min_length=1, max_length=200)]


class StrictInput(BaseModel):
    """Request bodies refuse unknown fields, so a typo is an error rather than ignored."""

    model_config = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class TenantCreate(StrictInput):
    name: Name
    plan: str = Field(default="free", min_length=1, max_length=64)


class TenantUpdate(StrictInput):
    plan: str | None = Field(default=None, min_length=1, max_length=64)
    status: Literal["active", "suspended"] | None = None


class TenantPublic(BaseModel):
    id: str
    name: str
    plan: str
    status: str
    created_at: datetime

    @classmethod
    def of(cls, tenant: Tenant) -> "TenantPublic":
        return cls(
            id=tenant.id,
            name=tenant.name,
            plan=tenant.plan,
            status=tenant.status,
            created_at=tenant.created_at,
        )


class TenantsPublic(BaseModel):
    tenants: list[TenantPublic]
    total: int


class ApiKeyCreate(StrictInput):
    name: Name = "default"
    scopes: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        default=None, max_length=16
    )
    expires_at: AwareDatetime | None = None


class ApiKeyPublic(BaseModel):
    id: str
    tenant_id: str
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, key: ApiKey) -> "ApiKeyPublic":
        return cls(
            id=key.id,
            tenant_id=key.tenant_id,
            name=key.name,
            prefix=key.prefix,
            scopes=list(key.scopes),
            created_at=key.created_at,
            last_used_at=key.last_used_at,
            expires_at=key.expires_at,
            revoked_at=key.revoked_at,
        )


class ApiKeyCreated(ApiKeyPublic):
    key: str = Field(description="The full key. It is shown only in this response.")


class ApiKeysPublic(BaseModel):
    keys: list[ApiKeyPublic]


class SessionCreate(StrictInput):
    title: str | None = Field(default=None, max_length=200)
    agent_type: Literal["kgent"] = "kgent"
    mode: Mode = "reflect"


class SessionPublic(BaseModel):
    id: str
    title: str | None
    agent_type: str
    mode: str
    status: str
    message_count: int
    tokens_used: int
    created_at: datetime
    last_message_at: datetime | None

    @classmethod
    def of(cls, session: Session) -> "SessionPublic":
        return cls(
            id=session.id,
            title=session.title,
            agent_type=session.agent_type,
            mode=session.mode,
            status=session.status,
            message_count=session.message_count,
            tokens_used=session.tokens_used,
            created_at=session.created_at,
            last_message_at=session.last_message_at,
        )


class SessionsPublic(BaseModel):
    sessions: list[SessionPublic]
    total: int


class MessageCreate(StrictInput):
    message: str = Field(description="At most KGENTS_MAX_MESSAGE_CHARS (32,000) characters.")
    mode: Mode | None = None
    budget: Budget = Budget.dialogue
    stream: bool = True


class MessagePublic(BaseModel):
    id: str
    session_id: str
    role: str
    content: str
    tokens_in: int
    tokens_out: int
    model: str | None
    created_at: datetime

    @classmethod
    def of(cls, message: Message) -> "MessagePublic":
        return cls(
            id=message.id,
            session_id=message.session_id,
            role=message.role,
            content=message.content,
            tokens_in=message.tokens_in,
            tokens_out=message.tokens_out,
            model=message.model,
            created_at=message.created_at,
        )


class MessagesPublic(BaseModel):
    messages: list[MessagePublic]
    total: int
    session_id: str


class HealthPublic(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    components: dict[str, str]


class TurnCancelled(BaseModel):
    session_id: str
    turn_id: str
    status: Literal["cancelling"]
