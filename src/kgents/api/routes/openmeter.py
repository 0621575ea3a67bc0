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
- Events are checked for what the pipeline needs, not only for the CloudEvents shape (the
  rules are in ``kgents.metering.cloudevents``): ``type`` becomes a NATS subject, ``source``
  and ``id`` the JetStream dedupe id, ``time`` defaults to now. Extension attributes are
  accepted and not kept; ``datacontenttype`` must be JSON if given.
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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime

from kgents.api.deps import ApiKeyHeaderDep, BearerDep, PlatformDep, get_principal
from kgents.api.problems import problem_doc, problem_response
from kgents.api.schemas import (
    MAX_OFFSET,
    MeterPublic,
    MeterQueryBody,
    MeterQueryResultPublic,
    MeterQueryRowPublic,
)
from kgents.clock import utc_now
from kgents.errors import Forbidden, InvalidInput, NotFound
from kgents.metering.cloudevents import (
    JSON_CONTENT_TYPE,
    MAX_BATCH,
    load_json,
    parse_events,
)
from kgents.metering.meters import Meter, WindowSize
from kgents.platform import Platform
from kgents.tenancy.keys import tokens_match
from kgents.tenancy.service import Principal

router = APIRouter(prefix="/api/v1", tags=["metering (OpenMeter)"])

MAX_REPORTED_ERRORS = 100
_CLOUDEVENT = "application/cloudevents+json"
_CLOUDEVENTS_BATCH = "application/cloudevents-batch+json"
_JSON = JSON_CONTENT_TYPE
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: problem_doc("Invalid request: which event, field or parameter"),
    401: problem_doc("No admin token or valid API key"),
    403: problem_doc("Admin only, another subject, or no 'usage' scope"),
    404: problem_doc("No such meter"),
    429: problem_doc("Rate limit of the API key exceeded"),
    503: problem_doc("Database unavailable; retrying is safe"),
    # Invalid input is a 400 here, as in OpenMeter; "4XX" also keeps FastAPI from documenting
    # its own 422 body, which these routes never answer.
    "4XX": problem_doc("Any other client error"),
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
    principal.require_scope("usage")
    return MeteringCaller(principal=principal)


CallerDep = Annotated[MeteringCaller, Depends(get_metering_caller)]
MeterRef = Annotated[str, Path(alias="meterIdOrSlug", description="The meter's slug or id")]


# -- ingest --------------------------------------------------------------------------------


@router.post(
    "/events",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**_ERRORS, 413: problem_doc("Body over the limit (1 MiB by default)")},
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
    document = load_json(await request.body())
    if media_type == _CLOUDEVENT and not isinstance(document, dict):
        raise InvalidInput(f"{_CLOUDEVENT} takes one event (a JSON object)", code="invalid_json")
    if media_type == _CLOUDEVENTS_BATCH and not isinstance(document, list):
        raise InvalidInput(f"{_CLOUDEVENTS_BATCH} takes a JSON array", code="invalid_json")
    if not isinstance(document, dict | list):
        raise InvalidInput("expected an event object or an array of events", code="invalid_json")
    items: list[Any] = [document] if isinstance(document, dict) else document
    now = utc_now()
    events, problems = parse_events(items, now=now)
    if problems:
        first = f"{problems[0].field}: {problems[0].message}"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return problem_response(
            400,
            detail=f"{first}{more}; nothing was stored",
            code="invalid_event",
            extensions={"errors": [problem.wire() for problem in problems[:MAX_REPORTED_ERRORS]]},
        )
    # One transaction; events stored before (duplicates) are skipped, so a retry is safe.
    await platform.outbox.add(events, at=now)
    notify = getattr(getattr(request.app.state, "relay", None), "notify", None)
    if callable(notify):
        notify()  # relay now rather than at the relay's next poll
    return Response(status_code=status.HTTP_204_NO_CONTENT)


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
    page: Annotated[int, Query(ge=1, le=MAX_OFFSET)] = 1,
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
    responses={**_ERRORS, 413: problem_doc("Body over the limit (1 MiB by default)")},
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
