"""Meter store benchmark: ingest throughput and query latency. Prints one JSON line.

    .venv/bin/python bench/bench_metering.py                      # SQLite in a temp dir, 1M events
    .venv/bin/python bench/bench_metering.py --events 200000
    .venv/bin/python bench/bench_metering.py --database-url postgresql://user@host/scratch_db
    .venv/bin/python bench/bench_metering.py --postgres          # embedded PostgreSQL, temp dir

The database must hold no meter events yet (use a scratch database); migrations are applied.

Ingest is measured for batches of 100 and 1000 events in two shapes:

- ``live``: events as they arrive in production, a few milliseconds apart, so the events of one
  minute share their rollup rows;
- ``spread``: events a few seconds apart over ``--days`` days, so nearly every event writes rollup
  rows of its own (the worst case; loading the query data set is this shape).

Queries run over the loaded data set: hourly windows of one subject grouped by model (the
headline), and daily windows in Europe/Berlin over all subjects.
"""

import argparse
import asyncio
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ingest import start_postgres
from harness import processes

from kgents.config import Settings
from kgents.metering.meters import DEFAULT_METERS
from kgents.records import UsageEvent
from kgents.store.engine import create_engine, database_url, upgrade_database_async
from kgents.store.meter_repo import SqlMeterStore

START = datetime(2026, 1, 1, tzinfo=UTC)
MODELS = ("gpt-4o-mini", "claude-sonnet-4-5", "demo")


def events(
    count: int, *, start: datetime, step: timedelta, subjects: int, prefix: str, seed: int
) -> Iterator[UsageEvent]:
    rng = random.Random(seed)
    for index in range(count):
        yield UsageEvent(
            id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            type="llm.tokens",
            subject=f"{prefix}-{rng.randrange(subjects):03d}",
            time=start + index * step,
            data={
                "tokens_in": rng.randint(1, 2000),
                "tokens_out": rng.randint(1, 800),
                "model": rng.choice(MODELS),
                "session_id": f"s{rng.randrange(10_000)}",
                "estimated": False,
            },
        )


async def ingest_rate(
    store: SqlMeterStore, stream: Iterator[UsageEvent], batch: int
) -> tuple[float, float]:
    """Events per second of ``store.ingest`` alone (building the events is not timed), and the
    process CPU time per event in microseconds (steadier than wall time on a busy machine)."""
    elapsed = cpu = 0.0
    total = 0
    while True:
        chunk = [event for _, event in zip(range(batch), stream, strict=False)]
        if not chunk:
            break
        began, began_cpu = time.perf_counter(), time.process_time()
        total += await store.ingest(chunk)
        elapsed += time.perf_counter() - began
        cpu += time.process_time() - began_cpu
    return total / elapsed, cpu / total * 1e6


async def latency(run: Callable[[], Awaitable[Any]], runs: int) -> dict[str, float]:
    await run()  # warm caches and the connection pool
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        await run()
        samples.append((time.perf_counter() - began) * 1000)
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 2),
        "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 2),
        "runs": runs,
    }


async def main(arguments: argparse.Namespace) -> dict[str, Any]:
    url = database_url(Settings(database_url=arguments.database_url))
    await upgrade_database_async(url)
    engine = create_engine(url)
    store = SqlMeterStore(engine, DEFAULT_METERS)
    try:
        if await store.event_count():
            raise SystemExit("the database already holds meter events: use a scratch database")
        await store.sync_meters()
        sample = arguments.rate_events
        ingest: dict[str, float] = {}
        live_step = timedelta(milliseconds=2)
        spread_step = timedelta(days=arguments.days) / arguments.events
        for index, (shape, step) in enumerate((("live", live_step), ("spread", spread_step))):
            for batch in (100, 1000):
                stream = events(
                    sample,
                    start=START - timedelta(days=400 - 100 * index - batch // 100),
                    step=step,
                    subjects=arguments.subjects,
                    prefix=f"rate-{shape}-{batch}",
                    seed=batch + index,
                )
                rate, cpu = await ingest_rate(store, stream, batch)
                ingest[f"{shape}_batch_{batch}_events_per_s"] = round(rate)
                ingest[f"{shape}_batch_{batch}_cpu_us_per_event"] = round(cpu, 1)
        data_set = events(
            arguments.events,
            start=START,
            step=spread_step,
            subjects=arguments.subjects,
            prefix="tenant",
            seed=42,
        )
        began = time.perf_counter()
        load_rate, load_cpu = await ingest_rate(store, data_set, 1000)
        ingest["load_spread_batch_1000_events_per_s"] = round(load_rate)
        ingest["load_spread_batch_1000_cpu_us_per_event"] = round(load_cpu, 1)
        load_seconds = time.perf_counter() - began
        end = START + timedelta(days=arguments.days)

        async def hourly_one_subject() -> Any:
            return await store.query(
                "llm_tokens_in",
                subjects=["tenant-000"],
                group_by=["model"],
                from_=START,
                to=end,
                window_size="HOUR",
            )

        async def daily_berlin_all_subjects() -> Any:
            return await store.query(
                "llm_tokens_in",
                group_by=["model"],
                from_=START,
                to=end,
                window_size="DAY",
                window_time_zone="Europe/Berlin",
            )

        rows = len(await hourly_one_subject())
        queries = {
            "hour_one_subject_by_model": {
                **await latency(hourly_one_subject, arguments.query_runs),
                "rows": rows,
            },
            "day_berlin_all_subjects_by_model": {
                **await latency(daily_berlin_all_subjects, max(5, arguments.query_runs // 5)),
                "rows": len(await daily_berlin_all_subjects()),
            },
        }
        return {
            "bench": "metering",
            "database": url.get_backend_name(),
            "events": arguments.events,
            "subjects": arguments.subjects,
            "days": arguments.days,
            "rate_sample_events": sample,
            "ingest": ingest,
            "load_seconds": round(load_seconds, 1),
            "stored_events": await store.event_count(),
            "query": queries,
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "cpus": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 2),
        }
    finally:
        await engine.dispose()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    backend = parser.add_mutually_exclusive_group()
    backend.add_argument("--database-url", help="default: SQLite in a temporary directory")
    backend.add_argument(
        "--postgres", action="store_true", help="a PostgreSQL server of its own (temp dir)"
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="events of the data set")
    parser.add_argument("--subjects", type=int, default=20, help="tenants in the data set")
    parser.add_argument("--days", type=int, default=30, help="days the data set spans")
    parser.add_argument("--rate-events", type=int, default=50_000, help="events per rate run")
    parser.add_argument("--query-runs", type=int, default=50, help="runs per query")
    return parser.parse_args(argv)


if __name__ == "__main__":
    options = parse(sys.argv[1:])
    with tempfile.TemporaryDirectory() as scratch, processes(Path(scratch)) as registry:
        if options.postgres:
            _, options.database_url = start_postgres(registry, Path(scratch))
        elif options.database_url is None:
            options.database_url = f"sqlite:///{Path(scratch) / 'bench.db'}"
        print(json.dumps(asyncio.run(main(options))))
