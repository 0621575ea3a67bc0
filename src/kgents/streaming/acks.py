"""Waiting for JetStream publish acks: bounded in time, never leaving a future dangling."""

import asyncio
from collections.abc import Iterable

from nats.js import api

from kgents.errors import EventsUnavailable

AckFuture = asyncio.Future[api.PubAck]


async def await_acks(
    futures: list[AckFuture], *, wait_seconds: float, lost: asyncio.Event | None = None
) -> list[api.PubAck]:
    """Wait (bounded) for the acks of ``futures``, in order; ``EventsUnavailable`` otherwise.

    Gives up at once when ``lost`` is set (the connection dropped: the acks cannot come).
    On any failure (or cancellation) every future is settled: pending ones are cancelled, errors
    retrieved, so none is left dangling in the driver.
    """
    if not futures:
        return []
    if not all(future.done() for future in futures):
        try:
            await _wait_all(futures, wait_seconds=wait_seconds, lost=lost)
        except asyncio.CancelledError:
            cancel_all(futures)
            raise
    failure: BaseException | None = None
    not_done = sum(1 for future in futures if not future.done())
    if not_done:
        failure = TimeoutError(f"{not_done} of {len(futures)} acks not received")
    acks: list[api.PubAck] = []
    for future in futures:
        if not future.done():
            future.cancel()
            continue
        exc = future.exception() if not future.cancelled() else asyncio.CancelledError()
        if exc is not None:
            failure = failure or exc
        elif failure is None:
            acks.append(future.result())
    if failure is not None:
        raise EventsUnavailable(f"event stream unavailable: publish not acknowledged ({failure})")
    return acks


async def _wait_all(
    futures: list[AckFuture], *, wait_seconds: float, lost: asyncio.Event | None
) -> None:
    if lost is None:
        await asyncio.wait(futures, timeout=wait_seconds)
        return
    everything = asyncio.ensure_future(asyncio.wait(futures))
    watcher = asyncio.ensure_future(lost.wait())
    try:
        await asyncio.wait(
            {everything, watcher}, timeout=wait_seconds, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for task in (everything, watcher):
            task.cancel()
        await asyncio.gather(everything, watcher, return_exceptions=True)


def cancel_all(futures: Iterable[AckFuture]) -> None:
    """Settle futures nobody will await (their errors are retrieved, pending ones cancelled)."""
    for future in futures:
        if future.done():
            if not future.cancelled():
                future.exception()
        else:
            future.cancel()
