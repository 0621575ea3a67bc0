"""``FluxStream``: an async source read ahead in a task, through a bounded queue.

Nothing runs until the stream is iterated, and the queue holds at most ``size`` items: a slow
consumer makes the producer wait instead of making memory grow.
"""

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable
from typing import Generic, TypeVar

T = TypeVar("T")

_DONE = object()


class FluxStream(Generic[T]):
    """An async source, handed on by ``batches``."""

    def __init__(self, source: AsyncIterable[T]) -> None:
        self._source = source

    def batches(self, size: int) -> AsyncGenerator[list[T], None]:
        """Read ahead up to ``size`` items in a task; each step yields every item read so far,
        waiting only for the first. A consumer that takes its time gets more items at once
        instead of falling further behind; a fast one gets them one by one. An error of the
        source is raised after the items read before it."""
        if size < 1:
            raise ValueError("size must be at least 1")
        source = self._source

        async def batched() -> AsyncGenerator[list[T], None]:
            queue: asyncio.Queue[object] = asyncio.Queue(maxsize=size)
            task = asyncio.create_task(_pump(source, queue))
            try:
                while True:
                    batch: list[T] = []
                    item = await queue.get()
                    while True:
                        if item is _DONE:
                            if batch:
                                yield batch
                            return
                        if isinstance(item, _Failure):
                            if batch:
                                yield batch
                            raise item.error
                        batch.append(item)  # type: ignore[arg-type]  # only T reaches here
                        if queue.empty():
                            break
                        item = queue.get_nowait()
                    yield batch
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        return batched()


async def _pump(stream: AsyncIterable[T], queue: "asyncio.Queue[object]") -> None:
    """Put the items of ``stream`` in ``queue`` (waiting for room), then ``_DONE`` or the error;
    the source is closed however the pump ends (a cancelled pump included).

    An item that finds the queue empty is handed over at once: the pump lets the waiting
    consumer run before it reads on. A source that bursts (a whole reply in one read) would
    otherwise be parsed up to the queue's bound before its first item went anywhere.
    """
    items = aiter(stream)
    try:
        async for item in items:
            await queue.put(item)
            if queue.qsize() == 1:
                await asyncio.sleep(0)
    except Exception as exc:  # handed to the consumer, who raises it
        await queue.put(_Failure(exc))
        return
    finally:
        close = getattr(items, "aclose", None)
        if close is not None:
            await close()
    await queue.put(_DONE)


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error
