"""The two streams are created once, kept as specified, and reported for ``kgents nats streams``."""

import contextlib
from pathlib import Path

import nats.js.errors
import pytest
from nats.js import api

from kgents.config import Settings
from kgents.streaming.connection import NatsConnection
from kgents.streaming.runtime import open_streaming
from kgents.streaming.topology import (
    EVENTS_STREAM,
    USAGE_STREAM,
    describe_streams,
    ensure_streams,
    stream_specs,
)
from tests.support.nats import NatsServer

pytestmark = pytest.mark.anyio


async def test_streams_are_created_then_left_alone(conn: NatsConnection) -> None:
    for stream in (EVENTS_STREAM, USAGE_STREAM):
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await conn.js.delete_stream(stream)
    first = await ensure_streams(conn, replicas=1)
    assert [(s.name, s.action) for s in first] == [
        (EVENTS_STREAM, "created"),
        (USAGE_STREAM, "created"),
    ]
    second = await ensure_streams(conn, replicas=1)
    assert [s.action for s in second] == ["unchanged", "unchanged"]


async def test_limits_read_back_in_the_right_units(conn: NatsConnection) -> None:
    await ensure_streams(conn, replicas=1)
    events = (await conn.js.stream_info(EVENTS_STREAM)).config
    assert events.subjects == ["kgent.session.>"]
    assert events.max_age == 168 * 3600  # seconds in nats-py, nanoseconds on the wire
    assert events.max_msgs_per_subject == 10_000
    assert events.duplicate_window == 120
    assert events.retention == api.RetentionPolicy.LIMITS
    assert events.storage == api.StorageType.FILE
    assert events.num_replicas == 1
    assert events.max_bytes == 1 << 30  # KGENTS_EVENTS_MAX_BYTES: messages cannot fill the disk
    usage = (await conn.js.stream_info(USAGE_STREAM)).config
    assert usage.max_bytes == -1  # metering never loses an unprocessed event
    assert usage.subjects == ["kgent.usage.>"]
    assert usage.max_age == 30 * 24 * 3600
    assert usage.max_msgs_per_subject == -1
    assert usage.storage == api.StorageType.FILE


async def test_a_drifted_stream_is_updated(conn: NatsConnection) -> None:
    await ensure_streams(conn, replicas=1)
    drifted = (await conn.js.stream_info(EVENTS_STREAM)).config
    drifted.max_age = 3600.0
    drifted.duplicate_window = 10.0
    drifted.max_msgs_per_subject = 5
    await conn.js.update_stream(drifted)
    outcome = await ensure_streams(conn, replicas=1)
    assert [s.action for s in outcome] == ["updated", "unchanged"]
    config = (await conn.js.stream_info(EVENTS_STREAM)).config
    assert config.max_age == 168 * 3600
    assert config.duplicate_window == 120
    assert config.max_msgs_per_subject == 10_000


async def test_changed_settings_are_applied(conn: NatsConnection) -> None:
    await ensure_streams(conn, replicas=1)
    events, usage = stream_specs(replicas=1)
    longer = events.__class__(
        name=events.name,
        subjects=events.subjects,
        max_age_seconds=200 * 3600.0,
        max_msgs_per_subject=20_000,
        replicas=1,
    )
    outcome = await ensure_streams(conn, replicas=1, specs=[longer, usage])
    assert [s.action for s in outcome] == ["updated", "unchanged"]
    assert (await conn.js.stream_info(EVENTS_STREAM)).config.max_age == 200 * 3600
    await ensure_streams(conn, replicas=1)  # back to the defaults for the other tests


async def test_the_events_byte_limit_follows_the_settings(
    conn: NatsConnection, nats: NatsServer, tmp_path: Path
) -> None:
    await ensure_streams(conn, replicas=1)
    settings = Settings(data_dir=tmp_path, nats_url=nats.url, events_max_bytes=64 << 20)
    async with open_streaming(settings):  # what the server does at start-up
        assert (await conn.js.stream_info(EVENTS_STREAM)).config.max_bytes == 64 << 20
    await ensure_streams(conn, replicas=1)  # back to the defaults for the other tests
    await ensure_streams(conn, replicas=1)  # back to the defaults for the other tests
    assert (await conn.js.stream_info(EVENTS_STREAM)).config.max_bytes == 1 << 30


async def test_describe_streams(conn: NatsConnection) -> None:
    await ensure_streams(conn, replicas=1)
    await conn.js.publish("kgent.session.ses_describe.chunk", b"{}")
    statuses = {s.name: s for s in await describe_streams(conn)}
    events = statuses[EVENTS_STREAM]
    assert events.exists
    assert events.messages >= 1
    assert events.bytes > 0
    assert events.last_seq >= events.first_seq >= 1
    assert events.consumer_count == 0
    assert events.max_age_seconds == 168 * 3600
    missing = await describe_streams(conn, ["kgent-nothing"])
    assert missing[0].exists is False
