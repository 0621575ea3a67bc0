"""The event stream of a running platform: embedded or external NATS, streams, publishers.

``open_streaming(settings)`` starts the embedded nats-server when ``KGENTS_NATS_URL`` is unset
(store in ``<data-dir>/jetstream``), connects, makes sure both streams exist with the limits of
DESIGN.md, and yields the session event log and the usage publisher. Closing it disconnects and
stops the embedded server. Every connection authenticates: with the credentials of
``KGENTS_NATS_URL``, ``KGENTS_NATS_CREDS`` and ``KGENTS_NATS_TLS_*``, or with the embedded
server's token from the data dir. When another process runs the data dir's embedded server
(the parent of ``kgents serve --workers N``), this one connects to it instead of starting one.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from kgents.config import Settings
from kgents.errors import EventsUnavailable
from kgents.streaming.bridge import JetStreamEventLog
from kgents.streaming.connection import NatsConnection
from kgents.streaming.embedded import (
    DEFAULT_START_SECONDS,
    EmbeddedNats,
    owned_elsewhere,
    running_server,
)
from kgents.streaming.nats_auth import NatsAuth, external_auth
from kgents.streaming.subjects import Namespace
from kgents.streaming.topology import ensure_streams
from kgents.streaming.usage import JetStreamUsagePublisher

logger = logging.getLogger(__name__)


@dataclass
class Streaming:
    connection: NatsConnection
    events: JetStreamEventLog
    usage: JetStreamUsagePublisher
    embedded: EmbeddedNats | None
    namespace: Namespace

    def is_connected(self) -> bool:
        return self.connection.is_connected


@contextlib.asynccontextmanager
async def open_streaming(settings: Settings) -> AsyncIterator[Streaming]:
    embedded: EmbeddedNats | None = None
    async with contextlib.AsyncExitStack() as stack:
        if settings.nats_url:
            servers, auth = settings.nats_url, external_auth(settings)
        elif owned_elsewhere(settings.data_dir):
            servers, auth = await _server_of_the_owner(settings)
            logger.info("nats-server of the data dir's owner process at %s", servers)
        else:
            embedded = EmbeddedNats(settings.data_dir)
            servers = await embedded.start()
            stack.push_async_callback(embedded.stop)
            auth = embedded.auth
            logger.info("embedded nats-server at %s (store %s)", servers, embedded.store_dir)
        connection = await NatsConnection.connect(servers, auth=auth)
        stack.push_async_callback(connection.close)
        ns = Namespace(settings.nats_prefix)
        await ensure_streams(
            connection,
            replicas=settings.nats_replicas,
            ns=ns,
            events_max_bytes=settings.events_max_bytes,
        )
        yield Streaming(
            connection=connection,
            events=JetStreamEventLog(
                connection, ns=ns, failover_seconds=settings.nats_failover_seconds
            ),
            usage=JetStreamUsagePublisher(connection, ns=ns),
            embedded=embedded,
            namespace=ns,
        )


async def _server_of_the_owner(settings: Settings) -> tuple[str, NatsAuth]:
    """URL and token of the embedded server another process runs (waiting, bounded, while
    that process is still starting it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEFAULT_START_SECONDS
    while (found := running_server(settings.data_dir)) is None:
        if loop.time() >= deadline:
            raise EventsUnavailable(
                f"another process holds {settings.data_dir} but runs no nats-server there"
            )
        await asyncio.sleep(0.05)
    return found


@contextlib.asynccontextmanager
async def connect_for_tools(settings: Settings) -> AsyncIterator[NatsConnection]:
    """A connection for command-line tools: the configured NATS, the running server's
    embedded one, or (nothing running) the data dir's embedded server for the duration."""
    target: tuple[str, NatsAuth] | None = (
        (settings.nats_url, external_auth(settings))
        if settings.nats_url
        else running_server(settings.data_dir)
    )
    if target is not None:
        connection = await NatsConnection.connect(target[0], auth=target[1])
        try:
            yield connection
        finally:
            await connection.close()
        return
    async with open_streaming(settings) as streaming:
        yield streaming.connection
