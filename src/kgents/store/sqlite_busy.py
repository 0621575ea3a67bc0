"""Waiting for another process's SQLite write without SQLite's busy handler.

The handler sleeps 1, 2, 5, 10... up to 100 ms between looks and so finds out late that the
lock is free: with ``kgents serve --workers 2`` on one file, 2-6 % of the writes waited 5 ms
or more that way (up to 90 and once 430 ms), and every write of that process queued behind
them. Here
``BEGIN IMMEDIATE`` is tried with the handler off and tried again after 0.1 ms, the pause
doubling to at most 1 ms, for as long as the handler would have waited in all; then the last
refusal is raised, as the handler's would have been. It runs on the connection's own thread.
"""

import sqlite3
import time
from collections.abc import Callable

BUSY_TIMEOUT_MS = 10_000
"""How long a write waits for another connection's (another process's) write."""
FIRST_PAUSE_SECONDS = 0.0001
LAST_PAUSE_SECONDS = 0.001


def begin_immediate(driver: sqlite3.Connection, begin: Callable[[], object] | None = None) -> None:
    """``BEGIN IMMEDIATE`` on ``driver`` (or ``begin()``, which sends it through a wrapper of
    that connection), looking again in short pauses while another connection writes."""
    send = begin or (lambda: driver.execute("BEGIN IMMEDIATE"))
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause = FIRST_PAUSE_SECONDS
    driver.execute("PRAGMA busy_timeout=0")
    try:
        while True:
            try:
                send()
                return
            except Exception as exc:
                if not busy(exc) or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(2 * pause, LAST_PAUSE_SECONDS)
    finally:
        driver.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


def busy(error: BaseException | None) -> bool:
    """Whether ``error`` (or what caused it) is SQLite's refusal while another connection
    holds the write lock."""
    while error is not None:
        if isinstance(error, sqlite3.OperationalError):
            return error.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
        error = error.__cause__
    return False
