"""Group commit: writes asked for while an earlier batch is being written go together in the
next one.

When the database is idle a write goes at once, alone; under load every caller that arrives
while a batch is in flight joins the next batch, so a burst of many small writes costs a few
transactions (and a few holds of the SQLite writer) instead of one each.
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class GroupCommit(Generic[T]):
    """Writes items with ``write_batch``; ``add`` returns once its item's batch is stored and
    raises what storing it raised."""

    def __init__(self, write_batch: Callable[[list[T]], Awaitable[None]]) -> None:
        self._write_batch = write_batch
        self._pending: list[T] = []
        self._next: asyncio.Future[None] | None = None  # the outcome of the pending batch
        self._writer: asyncio.Task[None] | None = None

    async def add(self, item: T) -> None:
        self._pending.append(item)
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        stored = self._next
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending(), name="group-commit")
        # The batch is everyone's: a caller that gives up does not cancel it.
        await asyncio.shield(stored)

    async def _write_pending(self) -> None:
        while self._next is not None:  # set exactly while items are pending
            items, stored = self._pending, self._next
            self._pending, self._next = [], None
            try:
                await self._write_batch(items)
            except asyncio.CancelledError:
                stored.cancel()
                raise
            except Exception as exc:
                stored.set_exception(exc)
                stored.exception()  # retrieved here: callers that gave up are not told twice
            else:
                stored.set_result(None)
