"""Builders for the usage events of DESIGN.md (CloudEvents 1.0 in OpenMeter's shape).

``llm.tokens`` has an id derived from the turn id, so a turn can never be billed twice.
"""

import uuid
from datetime import datetime

from kgents.records import UsageEvent

SOURCE = "kgents-api"
_TURN_NAMESPACE = uuid.UUID("6f1c1f36-52f4-4b7e-9a3c-3f2b8a6d8e10")


def api_request(
    *, tenant_id: str, endpoint: str, method: str, status_code: int, at: datetime
) -> UsageEvent:
    return UsageEvent(
        id=str(uuid.uuid4()),
        type="api.request",
        subject=tenant_id,
        time=at,
        data={"endpoint": endpoint, "method": method, "status_code": status_code},
    )


def session_create(*, tenant_id: str, session_id: str, agent_type: str, at: datetime) -> UsageEvent:
    return UsageEvent(
        id=str(uuid.uuid5(_TURN_NAMESPACE, f"session.create:{session_id}")),
        type="session.create",
        subject=tenant_id,
        time=at,
        data={"agent_type": agent_type, "session_id": session_id},
    )


def session_message(
    *, tenant_id: str, session_id: str, turn_id: str, message_length: int, at: datetime
) -> UsageEvent:
    return UsageEvent(
        id=str(uuid.uuid5(_TURN_NAMESPACE, f"session.message:{turn_id}")),
        type="session.message",
        subject=tenant_id,
        time=at,
        data={"session_id": session_id, "message_length": message_length},
    )


def llm_tokens(
    *,
    tenant_id: str,
    session_id: str,
    turn_id: str,
    tokens_in: int,
    tokens_out: int,
    model: str,
    estimated: bool,
    at: datetime,
) -> UsageEvent:
    return UsageEvent(
        id=llm_tokens_event_id(turn_id),
        type="llm.tokens",
        subject=tenant_id,
        time=at,
        data={
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
            "model": model,
            "session_id": session_id,
            "turn_id": turn_id,
            "estimated": estimated,
        },
    )


def llm_tokens_event_id(turn_id: str) -> str:
    return str(uuid.uuid5(_TURN_NAMESPACE, f"llm.tokens:{turn_id}"))
