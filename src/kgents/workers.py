"""Background work of a running server: cross-replica cancels, turn recovery, outbox relay,
metering (the ``metering`` consumer, shared by all replicas, and forwarding to OpenMeter),
storage pruning.

Each worker is a task that retries on its own; ``running_workers`` starts them all, yields
them (``Workers``: the relay to ``notify``, the metering processor for its ``stats``) and
cancels them on the way out.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

from kgents.metering.processor import MeteringProcessor
from kgents.metering.relay import OutboxRelay
from kgents.platform import Generation, Platform
from kgents.sessions.recovery import TurnRecovery
from kgents.sinks.openmeter import configured_sink
from kgents.store.pruning import StoragePruner
from kgents.streaming.runtime import Streaming
from kgents.streaming.usage_consumer import ConsumerSpec, UsageConsumer


@dataclass(frozen=True, slots=True)
class Workers:
    relay: OutboxRelay
    metering: MeteringProcessor


@contextlib.asynccontextmanager
async def running_workers(
    platform: Platform, streaming: Streaming, generation: Generation
) -> AsyncIterator[Workers]:
    lease = timedelta(seconds=platform.settings.turn_lease_seconds)
    recovery = TurnRecovery(
        store=platform.session_store,
        events=streaming.events,
        supervisor=generation.supervisor,
        lease=lease,
    )
    relay = OutboxRelay(outbox=platform.outbox, publisher=streaming.usage)
    settings = platform.settings
    sink = configured_sink(settings)
    usage = UsageConsumer(
        streaming.connection,
        spec=ConsumerSpec.in_namespace(
            streaming.namespace, ack_wait_seconds=settings.metering_ack_wait_seconds
        ),
    )
    metering = MeteringProcessor(source=usage, store=platform.meters, sink=sink)
    pruner = StoragePruner(
        platform.engine,
        batch=settings.prune_batch_rows,
        sent_retention=timedelta(seconds=settings.outbox_sent_retention_seconds),
    )

    async def cancel_here(session_id: str) -> None:
        generation.supervisor.cancel(session_id)

    cancels = await streaming.events.subscribe_cancels(cancel_here)
    tasks = [
        asyncio.create_task(
            recovery.run(interval_seconds=lease.total_seconds() / 3), name="turn-recovery"
        ),
        asyncio.create_task(relay.run(), name="outbox-relay"),
        asyncio.create_task(metering.run(), name="metering"),
        asyncio.create_task(
            pruner.run(interval_seconds=settings.prune_interval_seconds), name="storage-pruner"
        ),
    ]
    try:
        yield Workers(relay=relay, metering=metering)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await cancels.unsubscribe()
        await usage.close()
        if sink is not None:
            await sink.aclose()
