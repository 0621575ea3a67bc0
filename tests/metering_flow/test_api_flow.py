"""End to end through the real app: messages sent through the API become outbox rows, then
JetStream messages, then meter store events, each exactly once."""

import pytest

from kgents.store.meter_repo import SqlMeterStore
from kgents.streaming.connection import NatsConnection
from tests.conftest import Api
from tests.metering_flow.support import (
    consumer_idle,
    converse,
    event_keys,
    outbox_keys,
    republish_without_dedupe,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio


async def test_meter_totals_equal_the_tokens_of_the_turns(
    api: Api, conn: NatsConnection, database_url: str
) -> None:
    tenant_id, key = await api.tenant_with_key()
    tokens_in, tokens_out = await converse(api, key, messages=3)
    meters: SqlMeterStore = api.app.state.platform.meters

    async def counted() -> bool:
        totals = await meters.totals_by_subject("llm_tokens_out")
        return totals.get(tenant_id) == tokens_out

    await eventually(counted, seconds=15)
    await eventually(lambda: consumer_idle(conn), seconds=10)
    assert await meters.totals_by_subject("llm_tokens_in") == {tenant_id: tokens_in}
    assert await meters.totals_by_subject("session_count") == {tenant_id: 1}
    # Every outbox row became exactly one stored event, and nothing else did.
    assert await event_keys(database_url) == await outbox_keys(database_url)
    assert await meters.dead_letter_count() == 0

    # Every usage message again, past JetStream's dedupe: the store counts none of them twice.
    before = await meters.event_count()
    assert await republish_without_dedupe(conn) == before
    await eventually(lambda: consumer_idle(conn), seconds=10)
    assert await meters.event_count() == before
    assert await meters.totals_by_subject("llm_tokens_out") == {tenant_id: tokens_out}
    assert await meters.totals_by_subject("llm_tokens_in") == {tenant_id: tokens_in}
