"""``FluxStream``: lazy operators over an async iterable, with bounded buffers only.

Nothing runs until the stream is iterated. ``buffer`` and ``merge`` are the only operators that
start tasks, and each holds at most ``size`` items: a slow consumer makes the producer wait
instead of making memory grow.
"""

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
U = TypeVar("U")

_DONE = object()


class FluxStream(Generic[T]):
    """A lazily evaluated async stream. Iterate it with ``async for`` or ``collect`` it."""

    def __init__(self, source: AsyncIterable[T]) -> None:
        self._source = source

    def __aiter__(self) -> AsyncIterator[T]:
        return self._source.__aiter__()

    def map(self, function: Callable[[T], U]) -> "FluxStream[U]":
        async def mapped() -> AsyncIterator[U]:
            async for item in self._source:
                yield function(item)

        return FluxStream(mapped())

    def filter(self, predicate: Callable[[T], bool]) -> "FluxStream[T]":
        async def filtered() -> AsyncIterator[T]:
            async for item in self._source:
                if predicate(item):
                    yield item

        return FluxStream(filtered())

    def take(self, count: int) -> "FluxStream[T]":
        """The first ``count`` items; the source is closed after the last one is taken."""

        async def taken() -> AsyncIterator[T]:
            if count <= 0:
                return
            seen = 0
            iterator = self._source.__aiter__()
            try:
                async for item in iterator:
                    yield item
                    seen += 1
                    if seen >= count:
                        break
            finally:
                aclose = getattr(iterator, "aclose", None)
                if aclose is not None:
                    await aclose()

        return FluxStream(taken())

    def tap(self, effect: Callable[[T], Awaitable[None] | None]) -> "FluxStream[T]":
        """Run ``effect`` on each item (awaiting it if it is a coroutine) and pass it on."""

        async def tapped() -> AsyncIterator[T]:
            async for item in self._source:
                result = effect(item)
                if result is not None:
                    await result
                yield item

        return FluxStream(tapped())

    def buffer(self, size: int) -> "FluxStream[T]":
        """Read ahead up to ``size`` items in a task, so producer and consumer overlap."""
        return FluxStream.merge(self, buffer_size=size)

    def batches(self, size: int) -> "FluxStream[list[T]]":
        """Read ahead up to ``size`` items in a task; each step yields every item read so far,
        waiting only for the first. A consumer that takes its time gets more items at once
        instead of falling further behind; a fast one gets them one by one. An error of the
        source is raised after the items read before it."""
        if size < 1:
            raise ValueError("size must be at least 1")
        source = self._source

        async def batched() -> AsyncIterator[list[T]]:
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

        return FluxStream(batched())

    async def collect(self) -> list[T]:
        return [item async for item in self._source]

    @staticmethod
    def merge(*streams: AsyncIterable[T], buffer_size: int = 64) -> "FluxStream[T]":
        """Interleave several streams as their items arrive, through one bounded queue.

        An error in any source is raised to the consumer; leaving early cancels the sources.
        """
        if buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")

        async def merged() -> AsyncIterator[T]:
            queue: asyncio.Queue[object] = asyncio.Queue(maxsize=buffer_size)
            tasks = [asyncio.create_task(_pump(stream, queue)) for stream in streams]
            running = len(tasks)
            try:
                while running:
                    item = await queue.get()
                    if item is _DONE:
                        running -= 1
                    elif isinstance(item, _Failure):
                        raise item.error
                    else:
                        yield item  # type: ignore[misc]  # only T reaches this branch
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        return FluxStream(merged())


async def _pump(stream: AsyncIterable[T], queue: "asyncio.Queue[object]") -> None:
    """Put the items of ``stream`` in ``queue`` (waiting for room), then ``_DONE`` or the error."""
    try:
        async for item in stream:
            await queue.put(item)
    except Exception as exc:  # handed to the consumer, who raises it
        await queue.put(_Failure(exc))
        return
    await queue.put(_DONE)


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error
