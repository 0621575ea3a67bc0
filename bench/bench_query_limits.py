"""Meter queries at the query limits: how long the largest allowed ones take, how long the
event loop is held meanwhile, and how fast the issue's queries are refused. Prints one JSON line.

    .venv/bin/python bench/bench_query_limits.py [--rounds 5]

SQLite in a temp dir, one subject with usage every day for ten years. Each query runs
``--rounds`` times (medians reported): ``median_ms`` is its wall time, ``loop_cpu_ms`` the CPU
time of the event loop's thread during it (``time.thread_time``), i.e. the time no other
request could be served; the worker thread's CPU is not in it. The 30-day query is the
same-run baseline.
"""

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kgents.config import Settings
from kgents.errors import QueryTooLarge
from kgents.metering.meters import DEFAULT_METERS
from kgents.records import UsageEvent
from kgents.store.engine import create_engine, database_url, upgrade_database_async
from kgents.store.meter_repo import SqlMeterStore

END = datetime(2026, 1, 1, tzinfo=UTC)
TEN_YEARS = timedelta(days=3_650)
QUERIES: dict[str, dict[str, Any]] = {
    "baseline: 30 days of DAY windows, UTC": {
        "window_size": "DAY",
        "from_": END - timedelta(days=30),
        "to": END,
    },
    "3,650 days of DAY windows, America/New_York": {
        "window_size": "DAY",
        "window_time_zone": "America/New_York",
        "from_": END - TEN_YEARS,
        "to": END,
    },
    "3,650 days of MONTH windows, Europe/Berlin": {
        "window_size": "MONTH",
        "window_time_zone": "Europe/Berlin",
        "from_": END - TEN_YEARS,
        "to": END,
    },
    "10,000 HOUR windows, America/New_York": {
        "window_size": "HOUR",
        "window_time_zone": "America/New_York",
        "from_": END - timedelta(hours=10_000),
        "to": END,
    },
    "refused: MONTH over 1000-8999": {
        "window_size": "MONTH",
        "from_": datetime(1000, 1, 1, tzinfo=UTC),
        "to": datetime(8999, 1, 1, tzinfo=UTC),
    },
    "refused: DAY over 1000-2999": {
        "window_size": "DAY",
        "from_": datetime(1000, 1, 1, tzinfo=UTC),
        "to": datetime(2999, 1, 1, tzinfo=UTC),
    },
}


async def timed(store: SqlMeterStore, params: dict[str, Any]) -> tuple[float, float, str]:
    """(seconds, CPU seconds of the event loop's thread, outcome) of one query."""
    started, cpu = time.perf_counter(), time.thread_time()
    try:
        rows = await store.query("llm_tokens_in", subjects=["tenant-a"], **params)
        outcome = f"{len(rows)} rows"
    except QueryTooLarge:
        outcome = "refused (400)"
    return time.perf_counter() - started, time.thread_time() - cpu, outcome


async def main(rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        url = database_url(Settings(database_url=f"sqlite:///{Path(directory) / 'bench.db'}"))
        await upgrade_database_async(url)
        engine = create_engine(url)
        store = SqlMeterStore(engine, DEFAULT_METERS)
        days = range(TEN_YEARS.days)
        await store.ingest(
            [
                UsageEvent(
                    id=f"e{day}",
                    source="bench",
                    type="llm.tokens",
                    subject="tenant-a",
                    time=END - timedelta(days=day, hours=5),
                    data={"tokens_in": 10, "tokens_out": 1, "model": "demo"},
                )
                for day in days
            ]
        )
        results = {}
        for name, params in QUERIES.items():
            runs = [await timed(store, params) for _ in range(rounds)]
            results[name] = {
                "median_ms": round(statistics.median(r[0] for r in runs) * 1000, 2),
                "loop_cpu_median_ms": round(statistics.median(r[1] for r in runs) * 1000, 2),
                "outcome": runs[0][2],
            }
        await engine.dispose()
    return {
        "bench": "query_limits",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "rounds": rounds,
        "queries": results,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sys.stdout.write(json.dumps(asyncio.run(main(args.rounds))) + "\n")
