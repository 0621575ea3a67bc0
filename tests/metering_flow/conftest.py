"""Fixtures of the metering flow tests.

Every test gets its own nats-server (``nats_url`` is overridden here): the ``metering``
consumer is durable and shared by whoever pulls from it, so a server shared with other tests
would hand this test's events to their processors, and theirs to ours.
"""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kgents.metering.meters import load_meters
from kgents.store.engine import create_engine, upgrade_database_async
from kgents.store.meter_repo import SqlMeterStore
from kgents.streaming.connection import NatsConnection
from kgents.streaming.topology import ensure_streams
from tests.support.database import async_url
from tests.support.nats import NatsServer, nats_server


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server for this test only (which it may stop and start again)."""
    with nats_server(tmp_path / "nats") as server:
        yield server


@pytest.fixture
def nats_url(nats: NatsServer) -> str:
    return nats.url


@pytest.fixture
async def conn(nats: NatsServer) -> AsyncIterator[NatsConnection]:
    """A connection to the test's server, with the streams in place."""
    connection = await NatsConnection.connect(nats.url)
    try:
        await ensure_streams(connection, replicas=1)
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlMeterStore]:
    """A meter store with the default meters on a fresh, migrated database."""
    url = async_url(database_url)
    await upgrade_database_async(url)
    engine = create_engine(url)
    try:
        meter_store = SqlMeterStore(engine, load_meters(None))
        await meter_store.sync_meters()
        yield meter_store
    finally:
        await engine.dispose()
