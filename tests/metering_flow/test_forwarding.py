"""Forwarding to OpenMeter, with a second kgents process as the OpenMeter (its ``POST
/api/v1/events`` is OpenMeter's ingest API): through injected 503s and timeouts, and through a
full outage of the endpoint, nothing is lost and nothing is counted twice on either side."""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kgents.store.meter_repo import SqlMeterStore
from kgents.streaming.connection import NatsConnection
from kgents.streaming.topology import USAGE_STREAM
from kgents.streaming.usage_consumer import METERING_CONSUMER
from tests.conftest import Api, make_settings
from tests.metering_flow.support import (
    ENDPOINT_TOKEN,
    OpenMeterKgents,
    ScriptedEndpoint,
    consumer_idle,
    converse,
    event_keys,
    running_api,
    serving,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def openmeter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenMeterKgents]:
    endpoint = OpenMeterKgents(tmp_path_factory.mktemp("openmeter"))
    with endpoint.server:
        yield endpoint


async def forwarded_exactly(
    local_url: str, endpoint: OpenMeterKgents, conn: NatsConnection, tenant_id: str
) -> bool:
    """Both sides hold the same events of ``tenant_id`` and nothing waits in the stream."""
    local = await event_keys(local_url, subject=tenant_id)
    remote = await event_keys(endpoint.database_url, subject=tenant_id)
    return bool(local) and local == remote and await consumer_idle(conn)


async def test_forwarding_survives_503s_and_timeouts_without_loss_or_doubles(
    tmp_path: Path,
    database_url: str,
    nats_url: str,
    conn: NatsConnection,
    openmeter: OpenMeterKgents,
) -> None:
    # 503, 503, then a timeout whose batch *did* reach OpenMeter: the sink gives up on its
    # three attempts, the processor holds the batch and sends it again (503, then through).
    scripted = ScriptedEndpoint(upstream=openmeter.url, hang_seconds=1.0)
    scripted.script.extend(["503", "503", "hang", "503"])
    with serving(scripted) as proxy_url:
        settings = make_settings(
            tmp_path / "data",
            database_url,
            nats_url,
            openmeter_url=proxy_url,
            openmeter_token=ENDPOINT_TOKEN,
            openmeter_timeout_seconds=0.5,
        )
        async with running_api(settings) as api:
            tenant_id, key = await api.tenant_with_key()
            tokens_in, tokens_out = await converse(api, key, messages=3)
            await eventually(
                lambda: forwarded_exactly(database_url, openmeter, conn, tenant_id), seconds=15
            )
            await _assert_same_totals(api, openmeter, tenant_id, tokens_in, tokens_out)

    answers = scripted.answers()
    assert answers[:4] == ["503", "503", "hang", "503"] and "pass" in answers
    sent = scripted.ids_sent()
    assert len(sent) > len(set(sent))  # batches were sent again; OpenMeter's dedupe held


async def test_an_openmeter_outage_loses_nothing_and_doubles_nothing(
    tmp_path: Path,
    database_url: str,
    nats_url: str,
    conn: NatsConnection,
    openmeter: OpenMeterKgents,
) -> None:
    settings = make_settings(
        tmp_path / "data",
        database_url,
        nats_url,
        openmeter_url=openmeter.url,
        openmeter_token=ENDPOINT_TOKEN,
        openmeter_timeout_seconds=0.5,
    )
    async with running_api(settings) as api:
        tenant_id, key = await api.tenant_with_key()
        first_in, first_out = await converse(api, key, messages=1)
        await eventually(
            lambda: forwarded_exactly(database_url, openmeter, conn, tenant_id), seconds=10
        )
        await asyncio.to_thread(openmeter.server.stop)
        # Booting takes seconds: the outage lasts that long, and the test meanwhile checks
        # that the new events wait in JetStream, held by the processor.
        restart = asyncio.create_task(asyncio.to_thread(openmeter.server.start))
        try:
            more_in, more_out = await converse(api, key, messages=2)
            await eventually(lambda: _held_while_down(conn, openmeter), seconds=5)
        finally:
            await restart
        await eventually(
            lambda: forwarded_exactly(database_url, openmeter, conn, tenant_id), seconds=15
        )
        await _assert_same_totals(
            api, openmeter, tenant_id, first_in + more_in, first_out + more_out
        )
        meters: SqlMeterStore = api.app.state.platform.meters
        assert await meters.dead_letter_count() == 0


async def _held_while_down(conn: NatsConnection, endpoint: OpenMeterKgents) -> bool:
    """The endpoint is still down, and events wait in the stream unacknowledged, delivered
    once: held by the processor, not redelivered (no delivery used up)."""
    try:
        async with httpx.AsyncClient(timeout=1.0) as client:
            await client.get(f"{endpoint.url}/health")
    except httpx.TransportError:
        pass
    else:
        raise AssertionError("the endpoint came back before the test saw the outage")
    info = await conn.js.consumer_info(USAGE_STREAM, METERING_CONSUMER)
    return bool(info.num_ack_pending) and info.num_redelivered == 0


async def _assert_same_totals(
    api: Api, endpoint: OpenMeterKgents, tenant_id: str, tokens_in: int, tokens_out: int
) -> None:
    meters: SqlMeterStore = api.app.state.platform.meters
    assert await meters.totals_by_subject("llm_tokens_in") == {tenant_id: tokens_in}
    assert await meters.totals_by_subject("llm_tokens_out") == {tenant_id: tokens_out}

    async def remote_counted() -> bool:  # the endpoint's own processor may lag a little
        return await endpoint.total("llm_tokens_out", tenant_id) == tokens_out

    await eventually(remote_counted, seconds=10)
    assert await endpoint.total("llm_tokens_in", tenant_id) == tokens_in
    sessions = (await meters.totals_by_subject("session_count"))[tenant_id]
    assert await endpoint.total("session_count", tenant_id) == sessions
    requests = (await meters.totals_by_subject("api_requests"))[tenant_id]
    assert await endpoint.total("api_requests", tenant_id) == requests
