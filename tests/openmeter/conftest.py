"""Fixtures of the OpenMeter-compatible API tests: a contract-checking client on the app."""

import itertools
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from kgents.api.app import create_app
from kgents.config import Settings
from kgents.platform import Platform
from kgents.store.schema import OutboxRow
from tests.conftest import Api, make_settings
from tests.openmeter.contract import ContractClient
from tests.support.nats import running_nats_server

T0 = datetime(2025, 7, 7, tzinfo=UTC)
"""A Monday, midnight UTC, long before any test runs and apart from other suites' times, so
only these tests' events are in their windows (the run shares one nats-server)."""
SOURCE = "contract-tests"

_ids = itertools.count()


@pytest.fixture
def contract(api: Api) -> ContractClient:
    return ContractClient(api.client)


@pytest.fixture
def isolated_settings(tmp_path: Path, database_url: str) -> Iterator[Settings]:
    """Settings with a nats-server of their own. Tests that wait for the metering processor
    use it: on the run's shared server, the one durable ``metering`` consumer still holds what
    earlier tests' servers left unprocessed, which a new processor must work through first."""
    with running_nats_server(tmp_path / "nats") as nats_url:
        yield make_settings(tmp_path / "data", database_url, nats_url)


@pytest.fixture
async def isolated_api(isolated_settings: Settings) -> AsyncIterator[Api]:
    """Like ``api``, on ``isolated_settings``."""
    app = create_app(isolated_settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kgents.test") as client:
            yield Api(app=app, client=client, settings=isolated_settings)


def cloudevent(
    *,
    subject: str = "customer-1",
    type: str = "contract.event",
    time: datetime | str | None = T0,
    data: dict[str, Any] | None = None,
    id: str | None = None,
    source: str = SOURCE,
    **extra: Any,
) -> dict[str, Any]:
    """A CloudEvents 1.0 JSON event (OpenMeter's ``Event``), of a type no meter counts unless
    told otherwise, so what the ingest tests relay cannot reach another test's meters."""
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
