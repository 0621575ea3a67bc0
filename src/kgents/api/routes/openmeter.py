"""The OpenMeter-compatible metering API: same paths and shapes as OpenMeter v1.

=====================================================  ===========================================
route                                                  who may call it
=====================================================  ===========================================
``POST /api/v1/events``                                the admin token only
``GET /api/v1/meters``, ``GET /api/v1/meters/{ref}``   the admin token, or an API key (``usage``)
``GET|POST /api/v1/meters/{ref}/query``                the admin token: any subject; an API key:
                                                       its own subject (its tenant id) only
=====================================================  ===========================================

Where OpenMeter's spec leaves a choice, this is what kgents does:

- Ingest is admin only: usage is what tenants are billed for, so a tenant cannot write its own
  (or anyone's). An API key gets 403. A key querying another subject gets 403 too; its queries
  are always filtered to, and grouped by, its own subject. Neither confirms that a subject exists.
- A batch is all-or-nothing: every event is checked first, and one invalid event refuses the
  batch (400, nothing stored), naming each bad field as ``events[i].field`` (a single event is
  ``events[0]``). At most ``MAX_BATCH`` events per request; bodies over 1 MiB are refused (413).
- Events are checked for what the pipeline needs, not only for the CloudEvents shape: ``type`` is
  dot-separated ``[A-Za-z0-9_-]`` parts (it becomes the NATS subject ``kgent.usage.<type>``),
  ``source`` and ``id`` together at most 255 characters (the JetStream dedupe id), no control
  characters, text that is valid Unicode, ``time`` RFC 3339 with an offset (missing: now).
  Extension attributes are accepted and not kept; ``datacontenttype`` must be JSON if given.
- Duplicates (same ``source`` and ``id``, in one batch or ever before) are accepted and counted
  once; the first one wins, as in OpenMeter.
- Accepted events go to the usage outbox, then the outbox relay, JetStream and the metering
  processor, the same path as the platform's own events. A 204 means stored, not yet counted.
- ``to`` is exclusive (the spec's text says inclusive; OpenMeter's queries treat it as exclusive),
  ``from`` and ``to`` must fall on whole minutes, and invalid input is 400 (never 422).
- ``filterCustomerId``, ``filterGroupBy`` and ``advancedMeterGroupByFilters`` are refused (400):
  there are no customers, and group filters are not implemented; ignoring them would answer a
  different question. ``clientId`` is accepted and ignored. Results are JSON only (no CSV).
- Meters are configuration: ``id`` is a ULID-shaped digest of the slug (either works in paths),
  ``createdAt``/``updatedAt`` are when this server loaded them; ``includeDeleted`` matches none.
"""

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from kgents.api.deps import ApiKeyHeaderDep, BearerDep, PlatformDep, get_principal
from kgents.api.problems import problem_response
from kgents.api.routes.usage import require_usage_scope
from kgents.api.schemas import (
    MeterPublic,
    MeterQueryBody,
    MeterQueryResultPublic,
    MeterQueryRowPublic,
)
from kgents.clock import utc_now
from kgents.errors import Forbidden, InvalidInput, NotFound, Unavailable
from kgents.metering.meters import Meter, WindowSize
from kgents.metering.rollup import EARLIEST, LATEST
from kgents.platform import Platform
from kgents.records import UsageEvent
from kgents.store.outbox_repo import SqlOutboxStore
from kgents.tenancy.keys import tokens_match
from kgents.tenancy.service import Principal

router = APIRouter(prefix="/api/v1", tags=["metering (OpenMeter)"])

MAX_BATCH = 1000
"""Events per ingest request; a larger batch is refused whole (400)."""
MAX_REPORTED_ERRORS = 100
_MAX_DATA_DEPTH = 64
_CLOUDEVENT = "application/cloudevents+json"
_CLOUDEVENTS_BATCH = "application/cloudevents-batch+json"
_JSON = "application/json"
_TYPE_PART = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})", re.ASCII
)
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_LIMITS = {"id": 256, "source": 256, "subject": 256}

_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {**_PROBLEM, "description": "Invalid request: which event, field or parameter"},
    401: {**_PROBLEM, "description": "No admin token or valid API key"},
    403: {**_PROBLEM, "description": "Admin only, another subject, or no 'usage' scope"},
    404: {**_PROBLEM, "description": "No such meter"},
    429: {**_PROBLEM, "description": "Rate limit of the API key exceeded"},
    503: {**_PROBLEM, "description": "Database unavailable; retrying is safe"},
}
_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["specversion", "id", "source", "type", "subject"],
    "properties": {
        "specversion": {"type": "string", "enum": ["1.0"]},
        "id": {"type": "string", "minLength": 1},
        "source": {"type": "string", "minLength": 1},
        "type": {"type": "string", "minLength": 1, "example": "llm.tokens"},
        "subject": {"type": "string", "minLength": 1},
        "time": {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]},
        "datacontenttype": {"enum": [_JSON, None]},
        "data": {"anyOf": [{"type": "object"}, {"type": "null"}]},
    },
}
_BATCH_SCHEMA: dict[str, Any] = {"type": "array", "items": _EVENT_SCHEMA, "maxItems": MAX_BATCH}
_INGEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            _CLOUDEVENT: {"schema": _EVENT_SCHEMA},
            _CLOUDEVENTS_BATCH: {"schema": _BATCH_SCHEMA},
            _JSON: {"schema": {"anyOf": [_EVENT_SCHEMA, _BATCH_SCHEMA]}},
        },
    }
}


# -- who is calling ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeteringCaller:
    """The admin (``principal is None``) or a tenant's API key."""

    principal: Principal | None

    @property
    def tenant_id(self) -> str | None:
        return None if self.principal is None else self.principal.tenant.id


async def get_metering_caller(
    request: Request, platform: PlatformDep, bearer: BearerDep, api_key: ApiKeyHeaderDep
) -> MeteringCaller:
    """The admin token, else an API key (rate limited and metered like any tenant request)."""
    admin_token: str = request.app.state.admin_token
    if bearer is not None and tokens_match(bearer.credentials, admin_token):
        return MeteringCaller(principal=None)
    principal = await get_principal(request, platform, bearer, api_key)
    require_usage_scope(principal)
    return MeteringCaller(principal=principal)


CallerDep = Annotated[MeteringCaller, Depends(get_metering_caller)]
MeterRef = Annotated[str, Path(alias="meterIdOrSlug", description="The meter's slug or id")]


# -- ingest --------------------------------------------------------------------------------


@router.post(
    "/events",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**_ERRORS, 413: {**_PROBLEM, "description": "Body over 1 MiB"}},
    openapi_extra=_INGEST_BODY,
    summary="Ingest events",
)
async def ingest_events(request: Request, caller: CallerDep, platform: PlatformDep) -> Response:
    """Ingest one CloudEvent or a batch (all-or-nothing); admin token only."""
    if caller.principal is not None:
        raise Forbidden(
            "ingesting events needs the admin token; an API key may only read its own usage",
            code="admin_only",
        )
    media_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if media_type not in (_CLOUDEVENT, _CLOUDEVENTS_BATCH, _JSON):
        return problem_response(
            415,
            detail=f"send {_CLOUDEVENT}, {_CLOUDEVENTS_BATCH} or {_JSON}",
            code="unsupported_media_type",
        )
    try:
        document = json.loads(await request.body(), parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise InvalidInput("the body is not valid JSON", code="invalid_json") from None
    if media_type == _CLOUDEVENT and not isinstance(document, dict):
        raise InvalidInput(f"{_CLOUDEVENT} takes one event (a JSON object)", code="invalid_json")
    if media_type == _CLOUDEVENTS_BATCH and not isinstance(document, list):
        raise InvalidInput(f"{_CLOUDEVENTS_BATCH} takes a JSON array", code="invalid_json")
    if not isinstance(document, dict | list):
        raise InvalidInput("expected an event object or an array of events", code="invalid_json")
    items: list[Any] = [document] if isinstance(document, dict) else document
    if len(items) > MAX_BATCH:
        raise InvalidInput(
            f"a batch holds at most {MAX_BATCH} events, this one has {len(items)}",
            code="batch_too_large",
        )
    now = utc_now()
    events, errors = parse_events(items, now=now)
    if errors:
        first = f"{errors[0]['field']}: {errors[0]['message']}"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return problem_response(
            400,
            detail=f"{first}{more}; nothing was stored",
            code="invalid_event",
            extensions={"errors": errors[:MAX_REPORTED_ERRORS]},
        )
    await _add_to_outbox(platform.outbox, events, at=now)
    notify = getattr(getattr(request.app.state, "relay", None), "notify", None)
    if callable(notify):
        notify()  # relay now rather than at the relay's next poll
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_events(
    items: Sequence[Any], *, now: datetime
) -> tuple[list[UsageEvent], list[dict[str, Any]]]:
    """The events of a batch, one per ``(source, id)`` (first wins), or every problem found
    as ``{"index", "field", "message"}``."""
    events: dict[tuple[str, str], UsageEvent] = {}
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        found: list[tuple[str, str]] = []
        event = _parse_event(item, now=now, problems=found)
        for name, message in found:
            field = f"events[{index}]" + (f".{name}" if name else "")
            errors.append({"index": index, "field": field, "message": message})
        if event is not None and not found:
            events.setdefault((event.source, event.id), event)
    return list(events.values()), errors


def _parse_event(item: Any, *, now: datetime, problems: list[tuple[str, str]]) -> UsageEvent | None:
    if not isinstance(item, dict):
        problems.append(("", "must be a JSON object (a CloudEvent)"))
        return None
    if "specversion" not in item:
        problems.append(("specversion", 'is required ("1.0")'))
    elif item["specversion"] != "1.0":
        problems.append(("specversion", 'must be "1.0"'))
    text: dict[str, str] = {}
    for name in ("id", "source", "subject"):
        value = _text(item, name, _LIMITS[name], problems)
        if value is not None:
            text[name] = value
    if "id" in text and "source" in text and len(text["source"]) + len(text["id"]) > 255:
        problems.append(("id", "source and id together must be at most 255 characters"))
    event_type = item.get("type")
    if not isinstance(event_type, str) or not _is_event_type(event_type):
        problems.append(
            (
                "type",
                "must be dot-separated parts of letters, digits, '_' and '-', at most 128 "
                "characters (like 'llm.tokens')",
            )
        )
    at = _time(item.get("time"), now=now, problems=problems)
    content_type = item.get("datacontenttype")
    if content_type is not None and content_type != _JSON:
        problems.append(("datacontenttype", f'must be "{_JSON}" or absent'))
    data = item.get("data")
    if data is None:
        data = {}
    elif not isinstance(data, dict):
        problems.append(("data", "must be a JSON object"))
    elif (message := _data_problem(data)) is not None:
        problems.append(("data", message))
    if problems or at is None or not isinstance(event_type, str) or not isinstance(data, dict):
        return None
    return UsageEvent(
        id=text["id"],
        source=text["source"],
        type=event_type,
        subject=text["subject"],
        time=at,
        data=data,
    )


def _text(
    item: dict[str, Any], name: str, limit: int, problems: list[tuple[str, str]]
) -> str | None:
    value = item.get(name)
    if not isinstance(value, str) or not value:
        problems.append((name, "is required: a non-empty string"))
    elif len(value) > limit:
        problems.append((name, f"must be at most {limit} characters"))
    elif _CONTROL.search(value) or not _is_unicode(value):
        problems.append((name, "must not contain control characters or invalid Unicode"))
    else:
        return value
    return None


def _is_event_type(value: str) -> bool:
    return len(value) <= 128 and all(_TYPE_PART.fullmatch(part) for part in value.split("."))


def _is_unicode(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, which JSON's \\ud800 can smuggle in
        return False
    return True


def _time(value: Any, *, now: datetime, problems: list[tuple[str, str]]) -> datetime | None:
    if value is None:
        return now
    message = "must be an RFC 3339 date-time with an offset, like 2026-01-02T03:04:05Z"
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        problems.append(("time", message))
        return None
    try:
        at = datetime.fromisoformat(value.upper()).astimezone(UTC)
    except (ValueError, OverflowError):
        problems.append(("time", message))
        return None
    if not EARLIEST <= at < LATEST:
        problems.append(("time", f"must be between the years {EARLIEST.year} and {LATEST.year}"))
        return None
    return at


def _data_problem(data: dict[str, Any]) -> str | None:
    """Why ``data`` cannot travel through the outbox and JetStream, if it cannot."""
    if _depth(data) > _MAX_DATA_DEPTH:
        return f"must not nest deeper than {_MAX_DATA_DEPTH} levels"
    try:
        json.dumps(data, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        return "must not contain invalid Unicode (lone surrogates)"
    except (ValueError, RecursionError):
        return "must be plain JSON"
    return None


def _depth(value: Any) -> int:
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > _MAX_DATA_DEPTH:
            break
        if isinstance(current, dict):
            stack.extend((child, depth + 1) for child in current.values())
        elif isinstance(current, list):
            stack.extend((child, depth + 1) for child in current)
    return deepest


async def _add_to_outbox(outbox: SqlOutboxStore, events: list[UsageEvent], *, at: datetime) -> None:
    """Store ``events`` in the outbox, skipping those stored before (duplicates).

    The whole batch goes in one transaction. The outbox refuses a ``(source, id)`` it holds
    already, so on that conflict the batch is split and retried until only the duplicates are
    left out. A failure after a split can leave part of the batch stored: the client's retry
    is then safe, as the stored part is a duplicate the second time.
    """
    if not events:
        return
    try:
        await outbox.add(events, at=at)
    except IntegrityError:
        if len(events) == 1:
            return  # seen before: accepted silently, counted once
        middle = len(events) // 2
        await _add_to_outbox(outbox, events[:middle], at=at)
        await _add_to_outbox(outbox, events[middle:], at=at)
    except SQLAlchemyError as exc:
        raise Unavailable(
            "could not store the events; retrying is safe (duplicates are ignored)",
            code="store_unavailable",
        ) from exc


# -- meters --------------------------------------------------------------------------------


def meter_id(slug: str) -> str:
    """A stable ULID-shaped id for a meter (OpenMeter's ``Meter.id`` pattern): 128 bits of the
    slug's SHA-256 in Crockford base32."""
    number = int.from_bytes(hashlib.sha256(slug.encode()).digest()[:16], "big")
    return "".join(_CROCKFORD[(number >> shift) & 31] for shift in range(125, -1, -5))


def _meter(platform: Platform, ref: str) -> Meter:
    for meter in platform.meters.meters:
        if ref in (meter.slug, meter_id(meter.slug)):
            return meter
    raise NotFound(f"meter {ref!r} not found")


def _public(request: Request, meter: Meter) -> dict[str, Any]:
    loaded_at: datetime = request.app.state.meters_loaded_at
    return MeterPublic.of(meter, meter_id=meter_id(meter.slug), loaded_at=loaded_at).wire()


_SORT_KEYS = {
    "key": lambda meter: meter.slug,
    "name": lambda meter: meter.name or meter.slug,
    "aggregation": lambda meter: meter.aggregation.value,
    "createdAt": lambda meter: "",
    "updatedAt": lambda meter: "",
}


@router.get(
    "/meters",
    response_model=list[MeterPublic],
    responses=_ERRORS,
    summary="List meters",
)
async def list_meters(
    request: Request,
    caller: CallerDep,
    platform: PlatformDep,
    page: Annotated[int, Query(ge=1)] = 1,
    page_size: Annotated[int, Query(alias="pageSize", ge=1, le=1000)] = 100,
    order: Literal["ASC", "DESC"] = "ASC",
    order_by: Annotated[
        Literal["key", "name", "aggregation", "createdAt", "updatedAt"] | None,
        Query(alias="orderBy"),
    ] = None,
    include_deleted: Annotated[bool, Query(alias="includeDeleted")] = False,
) -> JSONResponse:
    """The configured meters (without ``orderBy``: in configuration order)."""
    meters = list(platform.meters.meters)
    if order_by is not None:
        meters.sort(key=lambda meter: meter.slug)  # ties (the timestamps) by slug
        meters.sort(key=_SORT_KEYS[order_by])
    if order == "DESC":
        meters.reverse()
    first = (page - 1) * page_size
    return JSONResponse([_public(request, meter) for meter in meters[first : first + page_size]])


@router.get(
    "/meters/{meterIdOrSlug}",
    response_model=MeterPublic,
    responses=_ERRORS,
    summary="Get meter",
)
async def get_meter(
    request: Request,
    caller: CallerDep,
    platform: PlatformDep,
    meter_ref: MeterRef,
) -> JSONResponse:
    return JSONResponse(_public(request, _meter(platform, meter_ref)))


# -- queries -------------------------------------------------------------------------------


@router.get(
    "/meters/{meterIdOrSlug}/query",
    response_model=MeterQueryResultPublic,
    responses=_ERRORS,
    summary="Query meter",
)
async def query_meter(
    request: Request,
    caller: CallerDep,
    platform: PlatformDep,
    meter_ref: MeterRef,
    client_id: Annotated[str | None, Query(alias="clientId", min_length=1, max_length=36)] = None,
    from_: Annotated[AwareDatetime | None, Query(alias="from")] = None,
    to: AwareDatetime | None = None,
    window_size: Annotated[WindowSize | None, Query(alias="windowSize")] = None,
    window_time_zone: Annotated[
        str, Query(alias="windowTimeZone", min_length=1, max_length=64)
    ] = "UTC",
    subject: Annotated[list[str] | None, Query(max_length=100)] = None,
    group_by: Annotated[list[str] | None, Query(alias="groupBy", max_length=100)] = None,
) -> JSONResponse:
    """Usage of a meter per window, subject and group (OpenMeter's query semantics)."""
    refused = [
        name
        for name in request.query_params
        if name.split("[", 1)[0]
        in ("filterCustomerId", "filterGroupBy", "advancedMeterGroupByFilters")
    ]
    _refuse_filters(refused)
    query = MeterQueryBody.model_construct(
        client_id=client_id,
        from_=from_,
        to=to,
        window_size=window_size,
        window_time_zone=window_time_zone,
        subject=subject,
        group_by=group_by,
    )
    return await _run_query(platform, caller, _meter(platform, meter_ref), query)


@router.post(
    "/meters/{meterIdOrSlug}/query",
    response_model=MeterQueryResultPublic,
    responses={**_ERRORS, 413: {**_PROBLEM, "description": "Body over 1 MiB"}},
    summary="Query meter",
)
async def query_meter_post(
    caller: CallerDep,
    platform: PlatformDep,
    body: MeterQueryBody,
    meter_ref: MeterRef,
) -> JSONResponse:
    """The same query with its parameters in a JSON body (OpenMeter's ``MeterQueryRequest``)."""
    refused = []
    if body.filter_customer_id:
        refused.append("filterCustomerId")
    if body.filter_group_by:
        refused.append("filterGroupBy")
    if body.advanced_meter_group_by_filters:
        refused.append("advancedMeterGroupByFilters")
    _refuse_filters(refused)
    return await _run_query(platform, caller, _meter(platform, meter_ref), body)


def _refuse_filters(names: list[str]) -> None:
    if names:
        raise InvalidInput(
            f"{', '.join(sorted(set(names)))}: not supported (filter by subject, group by keys)",
            code="unsupported_filter",
        )


async def _run_query(
    platform: Platform, caller: MeteringCaller, meter: Meter, query: MeterQueryBody
) -> JSONResponse:
    subjects = query.subject
    own = caller.tenant_id
    if own is not None:
        if subjects and any(subject != own for subject in subjects):
            raise Forbidden(
                "an API key may query only its own subject (its tenant id)",
                code="subject_forbidden",
            )
        subjects = [own]
    rows = await platform.meters.query(
        meter,
        subjects=subjects,
        group_by=query.group_by or (),
        from_=query.from_,
        to=query.to,
        window_size=query.window_size,
        window_time_zone=query.window_time_zone,
    )
    result = MeterQueryResultPublic(
        from_=query.from_.astimezone(UTC) if query.from_ else None,
        to=query.to.astimezone(UTC) if query.to else None,
        window_size=query.window_size,
        data=[MeterQueryRowPublic.of(row) for row in rows],
    )
    return JSONResponse(result.wire())
