"""FluxStream: a bounded read-ahead handing on what arrived meanwhile, errors after the items
before them, producers cancelled when the consumer leaves."""

import asyncio
from collections.abc import AsyncIterator

import pytest

from kgents.flux import FluxStream

pytestmark = pytest.mark.anyio


async def numbers(count: int, produced: list[int] | None = None) -> AsyncIterator[int]:
    for value in range(count):
        if produced is not None:
            produced.append(value)
        yield value
        await asyncio.sleep(0)


async def test_batches_take_what_arrived_meanwhile_and_stay_bounded() -> None:
    produced: list[int] = []
    stream = FluxStream(numbers(1000, produced)).batches(8).__aiter__()
    taken: list[list[int]] = [await stream.__anext__()]
    for _ in range(50):
        await asyncio.sleep(0)  # a slow consumer: the reader runs ahead, up to the bound
    assert len(produced) <= 8 + 2
    taken.append(await stream.__anext__())
    assert 2 <= len(taken[1]) <= 8  # everything read meanwhile comes at once
    taken.extend([batch async for batch in stream])
    assert [n for batch in taken for n in batch] == list(range(1000))


async def test_batches_raise_an_error_after_the_items_before_it() -> None:
    async def failing() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise RuntimeError("boom")

    seen: list[int] = []
    with pytest.raises(RuntimeError, match="boom"):
        async for batch in FluxStream(failing()).batches(4):
            seen.extend(batch)
    assert seen == [1, 2]


async def test_leaving_early_cancels_the_producer() -> None:
    cancelled = asyncio.Event()

    async def endless() -> AsyncIterator[int]:
        try:
            while True:
                yield 1
                await asyncio.sleep(0)
        finally:
            cancelled.set()

    batches = FluxStream(endless()).batches(2)
    assert await anext(batches)
    await batches.aclose()  # type: ignore[attr-defined]
    assert cancelled.is_set()


async def test_the_first_item_of_a_burst_goes_before_the_rest_is_read() -> None:
    produced: list[int] = []

    async def burst() -> AsyncIterator[int]:  # a whole reply in one read: no await between
        for value in range(100):
            produced.append(value)
            yield value

    batches = FluxStream(burst()).batches(64)
    assert await anext(batches) == [0]
    assert len(produced) == 1
    rest = [n async for batch in batches for n in batch]
    assert rest == list(range(1, 100))


async def test_a_source_is_closed_when_the_consumer_leaves_while_the_buffer_is_full() -> None:
    closed = asyncio.Event()

    async def flood() -> AsyncIterator[int]:
        try:
            while True:
                yield 1
        finally:
            closed.set()

    batches = FluxStream(flood()).batches(2)
    assert await anext(batches)
    for _ in range(5):
        await asyncio.sleep(0)  # the pump fills the buffer and waits for room
    await batches.aclose()  # type: ignore[attr-defined]
    assert closed.is_set()


def test_the_bound_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FluxStream(endless_numbers()).batches(0)


async def endless_numbers() -> AsyncIterator[int]:
    yield 0
