"""The CloudEvents codec per event, against the floor of plain ``json`` in the same run.

Prints one JSON line: microseconds per event (best of ``--rounds``) of
- ``decode``: ``load_json`` + ``decode_event`` of an ``llm.tokens`` event as the metering
  consumer reads it, against ``floor_decode``: ``json.loads`` + building the ``UsageEvent``
  with no checks;
- ``encode_event`` / ``encode_row``: ``encode`` of a ``UsageEvent`` (the platform's publishes)
  and of an outbox row as stored (the relay's), against ``floor_encode``: ``json.dumps``.

    .venv/bin/python bench/bench_codec.py [--events 20000] [--rounds 7]
"""

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kgents.metering import cloudevents
from kgents.metering import events as usage_events
from kgents.metering.relay import StoredUsageEvent
from kgents.records import UsageEvent

AT = datetime(2026, 12, 7, 12, 0, 0, 123456, tzinfo=UTC)


def best_us(work: Callable[[], Any], *, events: int, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(events):
            work()
        times.append((time.perf_counter() - started) / events * 1e6)
    return round(min(times), 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    event = usage_events.llm_tokens(
        tenant_id="ten_0123456789abcdef",
        session_id="ses_0123456789abcdef",
        turn_id="turn_0123456789abcdef",
        tokens_in=1200,
        tokens_out=340,
        model="gpt-4o-mini",
        estimated=False,
        at=AT,
    )
    row = StoredUsageEvent(
        source=event.source,
        id=event.id,
        type=event.type,
        subject=event.subject,
        time=cloudevents.format_time(event.time),
        data_json=json.dumps(event.data),
    )
    payload = cloudevents.encode(event)
    body = json.loads(payload)

    def floor_decode() -> UsageEvent:
        got = json.loads(payload)
        return UsageEvent(
            id=got["id"],
            source=got["source"],
            type=got["type"],
            subject=got["subject"],
            time=datetime.fromisoformat(got["time"]),
            data=got["data"],
        )

    def decode() -> UsageEvent:
        return cloudevents.decode_event(cloudevents.load_json(payload), default_time=AT)

    runs = {"events": args.events, "rounds": args.rounds}
    result = {
        "bench": "codec",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version()},
        "us_per_event": {
            "floor_decode": best_us(floor_decode, **runs),
            "decode": best_us(decode, **runs),
            "floor_encode": best_us(lambda: json.dumps(body).encode(), **runs),
            "encode_event": best_us(lambda: cloudevents.encode(event), **runs),
            "encode_row": best_us(lambda: cloudevents.encode(row), **runs),
        },
    }
    us = result["us_per_event"]
    result["decode_vs_floor"] = round(us["decode"] / us["floor_decode"], 2)
    result["encode_event_vs_floor"] = round(us["encode_event"] / us["floor_encode"], 2)
    print(json.dumps(result), file=sys.stdout)


if __name__ == "__main__":
    main()
