"""Waiting in tests without sleeping blindly: poll a condition until it holds, bounded."""

import asyncio
import time
from collections.abc import Awaitable, Callable


async def eventually(
    check: Callable[[], Awaitable[bool]], *, seconds: float = 5.0, every: float = 0.02
) -> None:
    """Return as soon as ``await check()`` is true; fail with ``TimeoutError`` after ``seconds``."""
    async with asyncio.timeout(seconds):
        while True:
            if await check():
                return
            await asyncio.sleep(every)


def until(check: Callable[[], bool], *, seconds: float = 5.0, every: float = 0.05) -> None:
    """``eventually`` for tests without an event loop (a server in a thread, a browser)."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not reached within {seconds} s")
        time.sleep(every)
