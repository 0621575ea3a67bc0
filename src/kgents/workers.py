"""Background work of a running server: cross-replica cancels, turn recovery, outbox relay.

Each worker is a task that retries on its own; ``running_workers`` starts them all and cancels
them on the way out.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

from kgents.metering.relay import OutboxRelay
from kgents.platform import Generation, Platform
from kgents.sessions.recovery import TurnRecovery
from kgents.streaming.runtime import Streaming


@contextlib.asynccontextmanager
async def running_workers(
    platform: Platform, streaming: Streaming, generation: Generation
) -> AsyncIterator[OutboxRelay]:
    lease = timedelta(seconds=platform.settings.turn_lease_seconds)
    recovery = TurnRecovery(
        store=platform.session_store,
        events=streaming.events,
        supervisor=generation.supervisor,
        lease=lease,
    )
    relay = OutboxRelay(outbox=platform.outbox, publisher=streaming.usage)

    async def cancel_here(session_id: str) -> None:
        generation.supervisor.cancel(session_id)

    cancels = await streaming.events.subscribe_cancels(cancel_here)
    tasks = [
        asyncio.create_task(
            recovery.run(interval_seconds=lease.total_seconds() / 3), name="turn-recovery"
        ),
        asyncio.create_task(relay.run(), name="outbox-relay"),
    ]
    try:
        yield relay
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await cancels.unsubscribe()
