"""FluxStream: laziness, operators, bounded buffers, error propagation."""

import asyncio
from collections.abc import AsyncIterator

import pytest

from kgents.flux import FluxEvent, FluxStream

pytestmark = pytest.mark.anyio


async def numbers(count: int, produced: list[int] | None = None) -> AsyncIterator[int]:
    for value in range(count):
        if produced is not None:
            produced.append(value)
        yield value
        await asyncio.sleep(0)


async def test_operators_compose_lazily() -> None:
    produced: list[int] = []
    seen: list[int] = []
    stream = (
        FluxStream(numbers(100, produced))
        .filter(lambda n: n % 2 == 0)
        .map(lambda n: n * 10)
        .tap(seen.append)
        .take(3)
    )
    assert produced == []  # nothing runs before iteration
    assert await stream.collect() == [0, 20, 40]
    assert seen == [0, 20, 40]
    assert produced == [0, 1, 2, 3, 4]  # take stopped the source early


async def test_tap_awaits_coroutines() -> None:
    seen: list[int] = []

    async def record(value: int) -> None:
        await asyncio.sleep(0)
        seen.append(value)

    assert await FluxStream(numbers(3)).tap(record).collect() == [0, 1, 2]
    assert seen == [0, 1, 2]


async def test_take_zero_and_negative() -> None:
    assert await FluxStream(numbers(5)).take(0).collect() == []


async def test_merge_interleaves_all_items() -> None:
    merged = await FluxStream.merge(numbers(5), numbers(3), buffer_size=2).collect()
    assert sorted(merged) == [0, 0, 1, 1, 2, 2, 3, 4]


async def test_buffer_is_bounded() -> None:
    produced: list[int] = []
    stream = FluxStream(numbers(1000, produced)).buffer(8).__aiter__()
    assert await stream.__anext__() == 0
    await asyncio.sleep(0.05)  # the producer runs ahead, but only as far as the bound
    assert len(produced) <= 8 + 3
    await stream.aclose()  # type: ignore[attr-defined]


async def test_errors_reach_the_consumer() -> None:
    async def failing() -> AsyncIterator[int]:
        yield 1
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await FluxStream(failing()).buffer(4).collect()


async def test_leaving_early_cancels_producers() -> None:
    cancelled = asyncio.Event()

    async def endless() -> AsyncIterator[int]:
        try:
            while True:
                yield 1
                await asyncio.sleep(0)
        finally:
            cancelled.set()

    assert await FluxStream.merge(endless(), buffer_size=2).take(3).collect() == [1, 1, 1]
    await asyncio.wait_for(cancelled.wait(), timeout=1)


def test_buffer_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FluxStream.merge(buffer_size=0)


def test_flux_event_kinds() -> None:
    data: FluxEvent[str, int] = FluxEvent.data("hello")
    meta: FluxEvent[str, int] = FluxEvent.metadata(7)
    assert data.is_data and not data.is_metadata and data.value == "hello"
    assert meta.is_metadata and meta.meta == 7


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
