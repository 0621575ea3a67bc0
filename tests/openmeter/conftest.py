"""Fixtures of the OpenMeter-compatible API tests: a contract-checking client on the app."""

import itertools
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from kgents.platform import Platform
from kgents.store.schema import OutboxRow
from tests.conftest import Api
from tests.openmeter.contract import ContractClient

T0 = datetime(2026, 3, 2, tzinfo=UTC)
"""A Monday, midnight UTC, well before any test runs: only the tests' events are there."""
SOURCE = "contract-tests"

_ids = itertools.count()


@pytest.fixture
def contract(api: Api) -> ContractClient:
    return ContractClient(api.client)


def cloudevent(
    *,
    subject: str = "customer-1",
    type: str = "llm.tokens",
    time: datetime | str | None = T0,
    data: dict[str, Any] | None = None,
    id: str | None = None,
    source: str = SOURCE,
    **extra: Any,
) -> dict[str, Any]:
    """A CloudEvents 1.0 JSON event (OpenMeter's ``Event``)."""
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": id or f"evt-{next(_ids)}",
        "source": source,
        "type": type,
        "subject": subject,
    }
    if time is not None:
        event["time"] = time if isinstance(time, str) else time.isoformat().replace("+00:00", "Z")
    if data is not None:
        event["data"] = data
    event.update(extra)
    return event


def tokens_data(tokens_in: int, tokens_out: int = 0, model: str = "demo") -> dict[str, Any]:
    return {"tokens_in": tokens_in, "tokens_out": tokens_out, "model": model}


async def outbox_rows(platform: Platform, source: str = SOURCE) -> list[OutboxRow]:
    """The outbox rows ingested under ``source``, whether relayed already or not."""
    async with platform.engine.connect() as connection:
        result = await connection.execute(
            select(OutboxRow.__table__).where(OutboxRow.source == source).order_by(OutboxRow.id)
        )
        return list(result.all())  # type: ignore[arg-type]
