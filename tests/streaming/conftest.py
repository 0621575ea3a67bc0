"""Fixtures of the streaming tests: a real nats-server per test module, a connection, the streams.

Tests use fresh random session ids, so they share a module's server without seeing each other.
Tests that take a server down start their own (``own_nats``).
"""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kgents.ids import new_id
from kgents.streaming.bridge import JetStreamEventLog
from kgents.streaming.connection import NatsConnection
from kgents.streaming.topology import ensure_streams
from tests.support.nats import NatsServer, nats_server


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A nats-server with JetStream for the test module."""
    with nats_server(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server for one test, which may stop, crash and restart it."""
    with nats_server(tmp_path / "nats") as server:
        yield server


@pytest.fixture
async def conn(nats: NatsServer) -> AsyncIterator[NatsConnection]:
    connection = await NatsConnection.connect(nats.url, connect_timeout=5.0)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def event_log(conn: NatsConnection) -> JetStreamEventLog:
    await ensure_streams(conn, replicas=1)
    return JetStreamEventLog(conn, heartbeat_seconds=1.0, outage_seconds=5.0)


@pytest.fixture
def session_id() -> str:
    return new_id("ses")
