"""Cancelling the metering loops: a cancellation a library swallowed still stops them."""

import asyncio


def raise_if_cancelled() -> None:
    """Honour a cancellation that a library swallowed: in Python 3.11 ``asyncio.wait_for``
    (which nats-py awaits inside every request) returns its result instead of raising when the
    result and the cancellation arrive together. ``Task.cancelling()`` still counts it, so the
    loops that could otherwise run forever check it each time round."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
