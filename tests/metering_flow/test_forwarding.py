"""Forwarding to OpenMeter, with a second kgents process as the OpenMeter (its ``POST
/api/v1/events`` is OpenMeter's ingest API): through injected 503s and timeouts, and through a
full outage of the endpoint, nothing is lost and nothing is counted twice on either side."""

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import Result
from typer.testing import CliRunner

from kgents.cli.main import app
from kgents.clock import utc_now
from kgents.config import Settings
from kgents.ids import new_id
from kgents.platform import open_platform
from kgents.records import UsageEvent
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
    tokens_event,
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


def _replay(settings: Settings, openmeter_url: str) -> Result:
    env = {
        "KGENTS_DATABASE_URL": settings.database_url or "",
        "KGENTS_OPENMETER_URL": openmeter_url,
        "KGENTS_OPENMETER_TOKEN": ENDPOINT_TOKEN,
        "KGENTS_OPENMETER_TIMEOUT_SECONDS": "0.5",
        "COLUMNS": "200",
    }
    argv = ["metering", "replay", "--all", "--data-dir", str(settings.data_dir)]
    return CliRunner().invoke(app, argv, env=env, catch_exceptions=False)


async def test_replayed_dead_letters_reach_openmeter_too(
    tmp_path: Path, database_url: str, openmeter: OpenMeterKgents
) -> None:
    # As the processor leaves them: ``counted`` was stored here but OpenMeter refused it then;
    # ``lost`` could not be stored at all; ``refused`` OpenMeter refuses again now.
    tenant_id = new_id("ten")
    counted, lost, refused = (tokens_event(tenant_id, tokens_in, 1) for tokens_in in (10, 20, 40))
    settings = make_settings(tmp_path / "data", database_url, "")
    async with open_platform(settings) as platform:
        await platform.meters.sync_meters()
        await platform.meters.ingest([counted])
        for event, error in (
            (counted, "not forwarded to OpenMeter: injected 400"),
            (lost, "storing failed: database was down"),
            (refused, "not forwarded to OpenMeter: injected 400"),
        ):
            await platform.meters.park_dead_letter(
                event=event, error=error, attempts=1, at=utc_now()
            )

    def refuse(events: list[dict[str, Any]]) -> str | None:
        return "still refused" if any(e["id"] == refused.id for e in events) else None

    scripted = ScriptedEndpoint(upstream=openmeter.url, refuse=refuse)
    with serving(scripted) as proxy_url:
        result = await asyncio.to_thread(_replay, settings, proxy_url)
        assert result.exit_code == 1, result.output
        assert "1 counted, 1 already counted (duplicates), 1 still parked" in result.output
        assert "OpenMeter" in result.output and "still refused" in result.output

        async def openmeter_has(*events: UsageEvent) -> bool:
            keys = await event_keys(openmeter.database_url, subject=tenant_id)
            return keys == sorted((event.source, event.id) for event in events)

        await eventually(lambda: openmeter_has(counted, lost), seconds=15)

        # OpenMeter down: the replay stops, with a clean error, and the event stays parked.
        scripted.refuse = lambda events: None
        scripted.unavailable = True
        down = await asyncio.to_thread(_replay, settings, proxy_url)
        assert down.exit_code == 1 and "openmeter_unavailable" in down.output, down.output
        assert "Traceback" not in down.output

        scripted.unavailable = False
        back = await asyncio.to_thread(_replay, settings, proxy_url)
        assert back.exit_code == 0, back.output
        assert "1 counted, 0 already counted (duplicates), 0 still parked" in back.output
        await eventually(lambda: openmeter_has(counted, lost, refused), seconds=15)

    local = await event_keys(database_url, subject=tenant_id)
    assert local == sorted((e.source, e.id) for e in (counted, lost, refused))
    async with open_platform(settings) as platform:
        assert await platform.meters.dead_letter_count() == 0
        assert await platform.meters.totals_by_subject("llm_tokens_in") == {tenant_id: 70.0}
