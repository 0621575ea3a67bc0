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

            async def pump(stream: AsyncIterable[T]) -> None:
                try:
                    async for item in stream:
                        await queue.put(item)
                except Exception as exc:  # handed to the consumer, who raises it
                    await queue.put(_Failure(exc))
                    return
                await queue.put(_DONE)

            tasks = [asyncio.create_task(pump(stream)) for stream in streams]
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


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error
