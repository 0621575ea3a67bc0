"""Request and response models of the HTTP API, in families (Create / Update / Public / plural)."""

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from kgents.config import Budget
from kgents.metering.meters import Meter, MeterAggregation, WindowSize
from kgents.metering.query import QueryRow
from kgents.records import ApiKey, HistoryMessage, Message, Session, Tenant, Turn, TurnStatus
from kgents.text import storable_text

Mode = Literal["reflect", "advise", "challenge", "explore"]
Text = Annotated[str, AfterValidator(storable_text)]
"""Free text a client sends: no NUL and no lone surrogate (``kgents.text``)."""
Name = Annotated[Text, Field(min_length=1, max_length=200)]
Label = Annotated[Text, Field(min_length=1, max_length=64)]
MAX_OFFSET = 2**31 - 1
"""The largest ``offset`` (and page) a listing accepts: far beyond any real listing, and
well inside a 64-bit integer, so neither database ever sees one it cannot hold."""


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
    plan: Label = "free"


class TenantUpdate(StrictInput):
    plan: Label | None = None
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
    scopes: list[Label] | None = Field(default=None, max_length=16)
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
    title: Annotated[Text, Field(max_length=200)] | None = None
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
    message: Text = Field(description="At most KGENTS_MAX_MESSAGE_CHARS (32,000) characters.")
    mode: Mode | None = None
    budget: Budget | None = Field(
        default=None,
        description="Default: the highest budget the plan allows, up to dialogue "
        "(GET /v1/kgent/budgets says which).",
    )
    stream: bool = True


class BudgetsPublic(BaseModel):
    plan: str
    budgets: list[Budget] = Field(description="The budgets the plan allows, lowest first.")
    default: Budget = Field(description="What a message that names no budget uses.")


class MessagePublic(BaseModel):
    id: str
    session_id: str
    turn_id: str | None
    role: str
    content: str
    tokens_in: int
    tokens_out: int
    model: str | None
    created_at: datetime
    status: TurnStatus | None = Field(
        description="How the message's turn ended (running while it runs). A reply that was "
        "cancelled, failed or interrupted holds the text generated until then; a turn that "
        "ended before any text has no assistant message, and its user message says why."
    )
    error_code: str | None = Field(
        description="Why the turn did not complete (cancelled, a provider error code…)."
    )

    @classmethod
    def of(
        cls, message: Message, *, status: TurnStatus | None, error_code: str | None
    ) -> "MessagePublic":
        return cls(
            id=message.id,
            session_id=message.session_id,
            turn_id=message.turn_id,
            role=message.role,
            content=message.content,
            tokens_in=message.tokens_in,
            tokens_out=message.tokens_out,
            model=message.model,
            created_at=message.created_at,
            status=status,
            error_code=error_code,
        )

    @classmethod
    def of_history(cls, entry: HistoryMessage) -> "MessagePublic":
        return cls.of(entry.message, status=entry.turn_status, error_code=entry.error_code)


class RunningTurnPublic(BaseModel):
    id: str
    events_after: int | None = Field(
        description="Follow GET .../events?after=<this> to get the turn from its first event "
        "(user_message), then live; null for a moment after the turn starts (follow "
        "?from=start then)."
    )

    @classmethod
    def of(cls, turn: Turn) -> "RunningTurnPublic":
        after = turn.first_seq - 1 if turn.first_seq is not None else None
        return cls(id=turn.id, events_after=after)


class MessagesPublic(BaseModel):
    messages: list[MessagePublic]
    total: int
    session_id: str
    running_turn: RunningTurnPublic | None = Field(
        description="The turn whose reply is being generated now, if any: its user message "
        "is in the history (status running), its reply not yet."
    )


class HealthPublic(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    components: dict[str, str]
    """``ok`` or ``down`` per component (database, llm, nats)."""
    reasons: dict[str, str] = {}
    """Why each component that is down is down, in one line."""


class LivePublic(BaseModel):
    status: Literal["ok"]
    version: str


class TurnCancelled(BaseModel):
    session_id: str
    turn_id: str
    status: Literal["cancelling"]


# -- OpenMeter-compatible metering API (/api/v1): OpenMeter's names, camelCase on the wire ----


class OpenMeterModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, validate_by_alias=True
    )


class MeterPublic(OpenMeterModel):
    """OpenMeter's ``Meter``. Meters are configuration here (``KGENTS_METERS_FILE``), so ``id``
    is derived from the slug and ``createdAt``/``updatedAt`` are when this server loaded them."""

    id: str
    slug: str
    name: str
    description: str | None = None
    aggregation: MeterAggregation
    event_type: str
    value_property: str | None = None
    group_by: dict[str, str]
    window_size: WindowSize
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, meter: Meter, *, meter_id: str, loaded_at: datetime) -> "MeterPublic":
        return cls(
            id=meter_id,
            slug=meter.slug,
            name=meter.name or meter.slug,  # OpenMeter: the name defaults to the slug
            description=meter.description,
            aggregation=meter.aggregation,
            event_type=meter.event_type,
            value_property=meter.value_property,
            group_by=dict(meter.group_by),
            window_size=meter.window_size,
            created_at=loaded_at,
            updated_at=loaded_at,
        )

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class MeterQueryBody(OpenMeterModel):
    """OpenMeter's ``MeterQueryRequest`` (the body of ``POST …/query``); unknown fields are
    refused so a misspelt parameter is an error rather than silently ignored."""

    model_config = ConfigDict(extra="forbid")

    client_id: str | None = Field(default=None, min_length=1, max_length=36)
    from_: AwareDatetime | None = Field(default=None, alias="from")
    to: AwareDatetime | None = None
    window_size: WindowSize | None = None
    window_time_zone: str = Field(default="UTC", min_length=1, max_length=64)
    subject: list[str] | None = Field(default=None, max_length=100)
    filter_customer_id: list[str] | None = Field(default=None, max_length=100)
    filter_group_by: dict[str, list[str]] | None = None
    advanced_meter_group_by_filters: dict[str, Any] | None = None
    group_by: list[str] | None = Field(default=None, max_length=100)


class MeterQueryRowPublic(OpenMeterModel):
    """OpenMeter's ``MeterQueryRow``: ``subject`` is ``null`` unless grouped by subject."""

    value: float
    window_start: datetime
    window_end: datetime
    subject: str | None
    group_by: dict[str, str | None]

    @classmethod
    def of(cls, row: QueryRow) -> "MeterQueryRowPublic":
        return cls(
            value=row.value,
            window_start=row.window_start,
            window_end=row.window_end,
            subject=row.subject,
            group_by=dict(row.group_by),
        )


class MeterQueryResultPublic(OpenMeterModel):
    """OpenMeter's ``MeterQueryResult``: ``from``, ``to`` and ``windowSize`` only when asked."""

    from_: datetime | None = Field(default=None, alias="from")
    to: datetime | None = None
    window_size: WindowSize | None = None
    data: list[MeterQueryRowPublic]

    def wire(self) -> dict[str, Any]:
        body = self.model_dump(mode="json", by_alias=True)
        for name in ("from", "to", "windowSize"):
            if body[name] is None:
                del body[name]
        return body
