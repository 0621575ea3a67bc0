"""``kgents serve --workers N``: N API processes on one host and port.

The parent process migrates the database once, runs the embedded nats-server when no
``KGENTS_NATS_URL`` is set (it holds the data dir's lock and supervises the server, so the
server outlives any one worker; the workers find it through the data dir), makes sure the
streams exist, and then hands over to uvicorn's process supervisor: it binds the socket once
and runs N spawned workers on it, restarting any that dies. Each worker builds its app with
``worker_app`` from the same environment (the parent exports its command-line options), so it
is a full replica: its own database pool, NATS connection and background work.
"""

import asyncio
import contextlib
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Literal

import uvicorn
from fastapi import FastAPI

from kgents.api.app import create_app
from kgents.cli.http_server import uvicorn_limits
from kgents.config import Settings
from kgents.observability.logging import LOG_FORMATS, configure_logging
from kgents.store.engine import database_url, upgrade_database
from kgents.streaming.runtime import open_streaming

logger = logging.getLogger(__name__)

LOG_LEVEL_ENV = "KGENTS_LOG_LEVEL"
LOG_FORMAT_ENV = "KGENTS_LOG_FORMAT"
_NATS_START_SECONDS = 60.0
_NATS_STOP_SECONDS = 30.0
_PARENT_CHECK_SECONDS = 1.0
_CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"


def worker_count(workers: int | Literal["auto"]) -> int:
    """How many API processes to run: ``auto`` is one per CPU this process may use (its
    affinity), capped by a cgroup v2 CPU quota (a container's CPU limit)."""
    if workers != "auto":
        return workers
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        quota = cpu_quota(Path(_CGROUP_CPU_MAX).read_text())
    except OSError:
        quota = None
    return max(1, min(usable or 1, quota or usable or 1))


def cpu_quota(cpu_max: str) -> int | None:
    """The CPUs a cgroup v2 ``cpu.max`` (``<quota> <period>`` or ``max <period>``) allows,
    rounded up; ``None`` when unlimited or unreadable."""
    fields = cpu_max.split()
    if len(fields) != 2 or not all(field.isdigit() for field in fields) or fields[1] == "0":
        return None
    return max(1, math.ceil(int(fields[0]) / int(fields[1])))


def worker_app() -> FastAPI:
    """The app of one worker process (uvicorn's factory), from the parent's environment."""
    _stop_when_orphaned()
    configure_logging(
        level=os.environ.get(LOG_LEVEL_ENV, "info"),
        fmt=LOG_FORMATS[os.environ.get(LOG_FORMAT_ENV, "auto")],
    )
    # What uvicorn does for ``access_log=False``, undone by ``configure_logging`` (the request
    # observer logs each request, with its request id).
    logging.getLogger("uvicorn.access").propagate = False
    return create_app(Settings(), migrate=False, serving=True)


def _stop_when_orphaned() -> None:
    """Shut this worker down gracefully (SIGTERM) if its parent dies without stopping it (a
    SIGKILL), so that no orphan keeps serving the port the next ``kgents serve`` needs."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_CHECK_SECONDS)
        logger.warning("the parent process %d is gone; stopping this worker", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def serve_workers(settings: Settings, *, log_level: str, log_format: str) -> None:
    """Run ``worker_count(settings.workers)`` workers until SIGINT or SIGTERM, then stop them (each
    finishes its turns, as a single process does) before the embedded nats-server."""
    upgrade_database(database_url(settings))
    with streams_ready(settings):
        os.environ.update(
            {
                "KGENTS_DATA_DIR": str(settings.data_dir.resolve()),
                "KGENTS_HOST": settings.host,
                "KGENTS_PORT": str(settings.port),
                LOG_LEVEL_ENV: log_level,
                LOG_FORMAT_ENV: log_format,
            }
        )
        uvicorn.run(
            f"{__name__}:{worker_app.__name__}",
            factory=True,
            workers=worker_count(settings.workers),
            host=settings.host,
            port=settings.port,
            log_level=log_level.lower(),
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=15,
            **uvicorn_limits(settings),
        )


@contextlib.contextmanager
def streams_ready(settings: Settings) -> Iterator[None]:
    """The streams in place, and the data dir's embedded nats-server running (on a thread of
    this process) for the block when no ``KGENTS_NATS_URL`` is set."""
    started: Future[None] = Future()
    stop = threading.Event()

    async def hold() -> None:
        async with open_streaming(settings):
            started.set_result(None)
            await asyncio.to_thread(stop.wait)

    def run() -> None:
        try:
            asyncio.run(hold())
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)  # raised by ``started.result`` below
            else:
                logger.exception("the event stream did not close cleanly")

    thread = threading.Thread(target=run, name="embedded-nats")
    thread.start()
    try:
        started.result(timeout=_NATS_START_SECONDS)
        yield
    finally:
        stop.set()
        thread.join(timeout=_NATS_STOP_SECONDS)
