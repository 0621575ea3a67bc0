"""Publish throughput: the bridge's batch publish against raw nats-py, on a fresh nats-server.

Prints one JSON line. Both sides publish the same number of chunk-sized events to
``kgent.session.<id>.chunk`` with a ``Nats-Msg-Id`` header, on the same connection, against
the same embedded nats-server (file storage, ``kgent-events`` stream):

- ``raw_async``: ``js.publish_async`` of pre-encoded payloads, then ``publish_async_completed``
  (nats-py's own pipelining, its default bound of 4,000 outstanding acks);
- ``bridge_batch``: ``JetStreamEventLog.batch()``: ``add()`` per event (JSON encoding, subject
  validation, bounded window of acks), then ``flush()``;
- ``raw_sync``: ``js.publish`` one round trip each, for reference.

Rounds alternate between the two async sides; the median of each is reported.

    .venv/bin/python bench/bench_publish.py [--events 20000] [--rounds 5]
"""

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kgents.clock import utc_now
from kgents.ids import new_id
from kgents.sessions.ports import SessionEvent
from kgents.streaming.bridge import JetStreamEventLog
from kgents.streaming.connection import NatsConnection
from kgents.streaming.embedded import EmbeddedNats
from kgents.streaming.topology import ensure_streams

TEXT = "token "


def chunk(session_id: str, turn_id: str, index: int) -> SessionEvent:
    return SessionEvent(
        session_id=session_id,
        type="chunk",
        data={"turn_id": turn_id, "text": TEXT, "index": index},
        msg_id=f"{turn_id}:{index}",
    )


async def raw_async(conn: NatsConnection, n: int) -> float:
    session_id, turn_id = new_id("ses"), new_id("turn")
    subject = f"kgent.session.{session_id}.chunk"
    payload = json.dumps(
        {
            "type": "chunk",
            "session_id": session_id,
            "time": utc_now().isoformat(),
            "data": {"turn_id": turn_id, "text": TEXT, "index": 0},
        }
    ).encode()
    js = conn.js
    started = time.perf_counter()
    for i in range(n):
        await js.publish_async(subject, payload, headers={"Nats-Msg-Id": f"{turn_id}:{i}"})
    await js.publish_async_completed()
    return n / (time.perf_counter() - started)


async def bridge_batch(log: JetStreamEventLog, n: int) -> float:
    session_id, turn_id = new_id("ses"), new_id("turn")
    events = [chunk(session_id, turn_id, i) for i in range(n)]
    started = time.perf_counter()
    batch = log.batch()
    for event in events:
        await batch.add(event)
    await batch.flush()
    elapsed = time.perf_counter() - started
    assert batch.published == n
    return n / elapsed


async def raw_sync(conn: NatsConnection, n: int) -> float:
    subject = f"kgent.session.{new_id('ses')}.chunk"
    started = time.perf_counter()
    for _ in range(n):
        await conn.js.publish(subject, b'{"type":"chunk"}')
    return n / (time.perf_counter() - started)


async def main(events: int, rounds: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="kgents-bench-") as data_dir:
        async with EmbeddedNats(Path(data_dir), supervise=False) as server:
            conn = await NatsConnection.connect(server.url, auth=server.auth)
            try:
                await ensure_streams(conn, replicas=1)
                log = JetStreamEventLog(conn)
                await raw_async(conn, 2_000)  # warm-up: connections, stream files, JIT-less caches
                await bridge_batch(log, 2_000)
                raw_rates, bridge_rates = [], []
                for _ in range(rounds):
                    raw_rates.append(await raw_async(conn, events))
                    bridge_rates.append(await bridge_batch(log, events))
                sync_rate = await raw_sync(conn, min(events, 2_000))
            finally:
                await conn.close()
    raw = statistics.median(raw_rates)
    bridge = statistics.median(bridge_rates)
    return {
        "bench": "publish",
        "events": events,
        "rounds": rounds,
        "raw_async_events_per_s": round(raw),
        "bridge_batch_events_per_s": round(bridge),
        "ratio": round(bridge / raw, 3),
        "target_ratio": 0.8,
        "raw_sync_events_per_s": round(sync_rate),
        "raw_async_rounds": [round(r) for r in raw_rates],
        "bridge_batch_rounds": [round(r) for r in bridge_rates],
        "python": sys.version.split()[0],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.events, args.rounds))))
