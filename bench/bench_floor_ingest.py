"""The floor of the ingest path's JetStream part: what nats-py alone does on this machine.

    .venv/bin/python bench/bench_floor_ingest.py [--events 100000] [--rounds 3]

No HTTP, no database, no kgents code: a nats-server (JetStream, file store, on 127.0.0.1, stopped
by PID) with a stream shaped like ``kgent-usage`` (``kgent.usage.>``, file storage, two-minute
duplicate window) and a durable pull consumer shaped like ``metering`` (explicit ack, ack wait
30 s, max ack pending 1,000). ``--events`` CloudEvents JSON bodies of ~300 bytes, each with its
own ``Nats-Msg-Id``, are encoded before any clock starts. Scenarios, each on a fresh stream:

- ``publish``: (a) every message published, pipelined, until every ack is in. Two ways:
  ``publish_async`` (nats-py's own: a future per message, at most 4,000 outstanding) and
  ``pipelined`` (core ``publish`` with one reply inbox, one subscription counting the acks, the
  producer waiting whenever ``--window`` acks are outstanding until half are back; what
  ``kgents.streaming.pipeline`` does, minus its bookkeeping).
- ``consume``: (b) the stream pre-filled (untimed), then fetches of 100 with one ack per
  message until all are acked and the acks flushed. Two ways: ``fetch`` (nats-py's
  ``PullSubscription.fetch(100)`` + ``Msg.ack()``) and ``raw`` (a pull request published by hand,
  deliveries through a subscription callback into a queue, acks as plain publishes to the reply
  subject: the shape of ``kgents.streaming.usage_consumer``). No decoding of the bodies.
  ``raw2`` is ``raw`` with two pull requests open at a time (still batches of 100).
- ``one_process.<consumer>``: (c) the faster publisher and the ``raw``/``raw2`` consumer as two
  tasks on one event loop and one connection (the shape of one ``kgents serve``), from an empty
  stream until the last message is acked.
- ``two_processes.<consumer>``: (d) the same two, the consumer in a child process of its own.

Each reports events/s (wall), CPU microseconds per event of the Python process(es) (user +
system, all threads) and of nats-server. uvloop is used, as ``kgents serve`` (uvicorn) does.
Rounds alternate the variants; medians are reported and every round is kept. Prints one JSON
line; progress on stderr.
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
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import psutil
import uvloop
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Proc, log, machine, processes, start_nats

STREAM = "kgent-usage"
SUBJECT_FILTER = "kgent.usage.>"
SUBJECT = "kgent.usage.llm.tokens"
CONSUMER = "metering"
FETCH = 100
SCENARIO_TIMEOUT = 180.0


# -- payloads ----------------------------------------------------------------------------------


def build_messages(count: int, run: str) -> list[tuple[bytes, dict[str, str]]]:
    """``count`` CloudEvents bodies as kgents' relay publishes them, with their dedupe headers."""
    start = datetime.now(UTC) - timedelta(minutes=30)
    messages = []
    for index in range(count):
        event_id = f"{run}-{index:08d}"
        at = (start + timedelta(milliseconds=index)).isoformat(timespec="microseconds")
        body = {
            "specversion": "1.0",
            "id": event_id,
            "source": "bench-floor",
            "type": "llm.tokens",
            "subject": f"bench-{index % 20:02d}",
            "time": at.replace("+00:00", "Z"),
            "datacontenttype": "application/json",
            "data": {
                "tokens_in": 1000 + index % 997,
                "tokens_out": 100 + index % 701,
                "model": "claude-sonnet-4-5",
                "session_id": f"s{index % 10_000}",
                "estimated": False,
            },
        }
        payload = json.dumps(body, separators=(",", ":")).encode()
        messages.append((payload, {"Nats-Msg-Id": f"bench-floor:{event_id}"}))
    return messages


# -- topology ----------------------------------------------------------------------------------


async def fresh_stream(nc: Client) -> None:
    """``kgent-usage`` and its ``metering`` consumer, empty (deleted and made again)."""
    js = nc.jetstream()
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_stream(STREAM)
    await js.add_stream(
        name=STREAM,
        subjects=[SUBJECT_FILTER],
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        discard=api.DiscardPolicy.OLD,
        max_age=30 * 86400.0,
        duplicate_window=120.0,
    )
    await js.add_consumer(
        STREAM,
        config=api.ConsumerConfig(
            name=CONSUMER,
            durable_name=CONSUMER,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=30.0,
            max_deliver=10,
            max_ack_pending=1000,
            filter_subject=SUBJECT_FILTER,
        ),
    )


async def check_stream(nc: Client, events: int, *, consumed: bool) -> None:
    """Every message stored once; with ``consumed``, every one acked."""
    js = nc.jetstream()
    info = await js.stream_info(STREAM)
    if info.state.messages != events:
        raise RuntimeError(f"stream holds {info.state.messages} messages, not {events}")
    if consumed:
        consumer = await js.consumer_info(STREAM, CONSUMER)
        floor = consumer.ack_floor.stream_seq if consumer.ack_floor else 0
        if consumer.num_ack_pending or consumer.num_pending or floor != events:
            raise RuntimeError(
                f"consumer not done: ack floor {floor}, ack pending {consumer.num_ack_pending},"
                f" pending {consumer.num_pending}"
            )


# -- publishers --------------------------------------------------------------------------------


async def publish_async(nc: Client, messages: list[tuple[bytes, dict[str, str]]], _: int) -> None:
    """nats-py's pipelining: a future per message, its own bound of outstanding acks."""
    js = nc.jetstream()
    futures = []
    for payload, headers in messages:
        futures.append(await js.publish_async(SUBJECT, payload, headers=headers))
    await js.publish_async_completed()
    failed = sum(1 for f in futures if f.exception() is not None)
    if failed:
        raise RuntimeError(f"{failed} publishes failed")


async def publish_pipelined(
    nc: Client, messages: list[tuple[bytes, dict[str, str]]], window: int
) -> None:
    """Core publishes with one reply inbox; acks only counted; at most ``window`` outstanding."""
    loop = asyncio.get_running_loop()
    inbox = nc.new_inbox()
    state = {"acked": 0, "target": 0, "errors": 0}
    waiter: list[asyncio.Future[None]] = []

    async def on_ack(msg: Msg) -> None:
        state["acked"] += 1
        if b'"error"' in msg.data or (msg.headers and msg.headers.get("Status")):
            state["errors"] += 1
        if waiter and state["acked"] >= state["target"] and not waiter[0].done():
            waiter[0].set_result(None)

    async def wait_for(acked: int) -> None:
        if state["acked"] >= acked:
            return
        state["target"] = acked
        waiter[:] = [loop.create_future()]
        async with asyncio.timeout(30):
            await waiter[0]

    sub = await nc.subscribe(inbox, cb=on_ack)
    try:
        sent = 0
        publish = nc.publish
        for payload, headers in messages:
            await publish(SUBJECT, payload, reply=inbox, headers=headers)
            sent += 1
            if sent - state["acked"] >= window:
                await wait_for(sent - window // 2)
        await wait_for(sent)
    finally:
        await sub.unsubscribe()
    if state["errors"]:
        raise RuntimeError(f"{state['errors']} publishes failed")


PUBLISHERS: dict[str, Callable[[Client, list[tuple[bytes, dict[str, str]]], int], Awaitable[None]]]
PUBLISHERS = {"publish_async": publish_async, "pipelined": publish_pipelined}


# -- consumers ---------------------------------------------------------------------------------


async def consume_fetch(nc: Client, events: int) -> None:
    """nats-py's pull subscription: ``fetch(100)``, then ``ack()`` per message."""
    js = nc.jetstream()
    psub = await js.pull_subscribe_bind(CONSUMER, stream=STREAM)
    acked = 0
    try:
        while acked < events:
            try:
                msgs = await psub.fetch(FETCH, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                await msg.ack()
            acked += len(msgs)
        await nc.flush()
    finally:
        await psub.unsubscribe()


async def consume_raw(nc: Client, events: int, inflight: int = 1) -> None:
    """Pull requests by hand (batch 100, 1 s expiry), deliveries through a callback-fed
    queue; each batch acked once complete, one plain publish per message to its reply subject
    (what ``Msg.ack`` sends). ``inflight`` requests are kept open: the server fills them in
    order, so deliveries belong to the oldest open one until it is full or ends (404/408)."""
    inbox = nc.new_inbox()
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def deliver(msg: Msg) -> None:
        queue.put_nowait(msg)

    sub = await nc.subscribe(f"{inbox}.*", cb=deliver)
    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{CONSUMER}"
    request = json.dumps({"batch": FETCH, "expires": 1_000_000_000}).encode()
    publish = nc.publish
    acked = requests = 0
    open_requests: list[str] = []
    batch: list[Msg] = []

    async def ask() -> None:
        nonlocal requests
        requests += 1
        open_requests.append(f"{inbox}.{requests}")
        await publish(next_subject, request, reply=open_requests[-1])

    try:
        for _ in range(inflight):
            await ask()
        while acked < events:
            msg = await queue.get()
            if msg.headers and msg.headers.get("Status"):
                if msg.subject not in open_requests:
                    continue
                ended = open_requests.index(msg.subject)
                del open_requests[: ended + 1]  # it ended; older ones are over too
            else:
                batch.append(msg)
                if len(batch) < FETCH:
                    continue
                open_requests.pop(0)
            for delivered in batch:
                await publish(delivered.reply, b"")
            acked += len(batch)
            batch.clear()
            while len(open_requests) < inflight:
                await ask()
        await nc.flush()
    finally:
        await sub.unsubscribe()


async def consume_raw2(nc: Client, events: int) -> None:
    """``raw`` with two pull requests open at a time (the next batch is on its way while
    one is acked)."""
    await consume_raw(nc, events, inflight=2)


CONSUMERS: dict[str, Callable[[Client, int], Awaitable[None]]]
CONSUMERS = {"fetch": consume_fetch, "raw": consume_raw, "raw2": consume_raw2}


# -- measuring ---------------------------------------------------------------------------------


def cpu_now() -> float:
    """CPU seconds of this process so far, every thread, user + system."""
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


def figures(
    events: int, wall: float, cpu: dict[str, float], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "seconds": round(wall, 3),
        "events_per_s": round(events / wall),
        "cpu_us_per_event": {name: round(s / events * 1e6, 1) for name, s in cpu.items()},
    }
    python = sum(s for name, s in cpu.items() if name != "nats_server")
    result["cpu_us_per_event"]["python_total"] = round(python / events * 1e6, 1)
    result["cpu_us_per_event"]["all"] = round(sum(cpu.values()) / events * 1e6, 1)
    return {**result, **(extra or {})}


async def run_publish(
    nc: Client, server: Proc, messages: list[tuple[bytes, dict[str, str]]], how: str, window: int
) -> dict[str, Any]:
    await fresh_stream(nc)
    cpu0, server0, began = cpu_now(), server.cpu_seconds(), time.perf_counter()
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        await PUBLISHERS[how](nc, messages, window)
    wall = time.perf_counter() - began
    cpu = {"python": cpu_now() - cpu0, "nats_server": server.cpu_seconds() - server0}
    await check_stream(nc, len(messages), consumed=False)
    return figures(len(messages), wall, cpu)


async def run_consume(
    nc: Client, server: Proc, messages: list[tuple[bytes, dict[str, str]]], how: str, window: int
) -> dict[str, Any]:
    await fresh_stream(nc)
    await publish_pipelined(nc, messages, window)  # fill the stream, untimed
    cpu0, server0, began = cpu_now(), server.cpu_seconds(), time.perf_counter()
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        await CONSUMERS[how](nc, len(messages))
    wall = time.perf_counter() - began
    cpu = {"python": cpu_now() - cpu0, "nats_server": server.cpu_seconds() - server0}
    await check_stream(nc, len(messages), consumed=True)
    return figures(len(messages), wall, cpu)


async def run_one_process(
    nc: Client,
    server: Proc,
    messages: list[tuple[bytes, dict[str, str]]],
    publisher: str,
    consumer: str,
    window: int,
) -> dict[str, Any]:
    await fresh_stream(nc)
    events = len(messages)
    cpu0, server0, began = cpu_now(), server.cpu_seconds(), time.perf_counter()
    published_at: list[float] = []

    async def publish() -> None:
        await PUBLISHERS[publisher](nc, messages, window)
        published_at.append(time.perf_counter())

    async with asyncio.timeout(SCENARIO_TIMEOUT):
        await asyncio.gather(publish(), CONSUMERS[consumer](nc, events))
    wall = time.perf_counter() - began
    cpu = {"python": cpu_now() - cpu0, "nats_server": server.cpu_seconds() - server0}
    await check_stream(nc, events, consumed=True)
    extra = {"publish_done_s": round(published_at[0] - began, 3)}
    return figures(events, wall, cpu, extra)


async def run_two_processes(
    nc: Client,
    server: Proc,
    spawn: Callable[[list[str]], Proc],
    messages: list[tuple[bytes, dict[str, str]]],
    publisher: str,
    consumer: str,
    window: int,
) -> dict[str, Any]:
    await fresh_stream(nc)
    events = len(messages)
    argv = [sys.executable, __file__, "--role", "consumer", "--url", server.url]
    child = spawn([*argv, "--consumer", consumer, "--events", str(events)])
    js = nc.jetstream()
    async with asyncio.timeout(30):  # the child is ready once its first pull request waits
        while (await js.consumer_info(STREAM, CONSUMER)).num_waiting == 0:
            if not child.alive():
                raise RuntimeError(f"consumer process died: {child.log_tail()}")
            await asyncio.sleep(0.02)
    cpu0, server0, began = cpu_now(), server.cpu_seconds(), time.time()
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        await PUBLISHERS[publisher](nc, messages, window)
    published = time.time()
    publisher_cpu = cpu_now() - cpu0
    await asyncio.to_thread(child.popen.wait, SCENARIO_TIMEOUT)
    assert child.popen.stdout is not None
    report = json.loads(child.popen.stdout.read().decode().strip().splitlines()[-1])
    server_cpu = server.cpu_seconds() - server0
    await check_stream(nc, events, consumed=True)
    wall = max(published, report["done_at"]) - began
    cpu = {"publisher": publisher_cpu, "consumer": report["cpu_s"], "nats_server": server_cpu}
    return figures(events, wall, cpu, {"publish_done_s": round(published - began, 3)})


async def consumer_role(url: str, consumer: str, events: int) -> None:
    """The child of ``two_processes``: consume ``events`` and print when it was done and the
    CPU it took (from its first pull request on)."""
    nc = await nats.connect(url)
    try:
        cpu0 = cpu_now()
        async with asyncio.timeout(SCENARIO_TIMEOUT):
            await CONSUMERS[consumer](nc, events)
        print(json.dumps({"done_at": time.time(), "cpu_s": cpu_now() - cpu0}))
    finally:
        await nc.close()


async def measure(args: argparse.Namespace, server: Proc, workdir: Path) -> dict[str, Any]:
    rounds: dict[str, list[dict[str, Any]]] = {}

    def keep(name: str, result: dict[str, Any]) -> None:
        rounds.setdefault(name, []).append(result)
        log(f"{name}: {result['events_per_s']} events/s, CPU µs/event {result['cpu_us_per_event']}")

    nc = await nats.connect(server.url)
    try:
        warm = build_messages(5_000, "warm")
        await run_publish(nc, server, warm, "pipelined", args.window)
        await run_consume(nc, server, warm, "raw", args.window)
        for round_ in range(args.rounds):
            log(f"round {round_ + 1} of {args.rounds}: publish, consume")
            messages = build_messages(args.events, f"r{round_}p")
            for how in PUBLISHERS if round_ % 2 == 0 else reversed(PUBLISHERS):
                keep(f"publish.{how}", await run_publish(nc, server, messages, how, args.window))
            for how in CONSUMERS if round_ % 2 == 0 else reversed(CONSUMERS):
                keep(f"consume.{how}", await run_consume(nc, server, messages, how, args.window))
        publisher = _fastest(rounds, "publish")
        together = ("raw", "raw2")  # the hand-made pulls: one request open, or two
        log(f"together: publisher {publisher}, consumers {together}")
        (workdir / "children").mkdir(exist_ok=True)
        with processes(workdir / "children") as children:

            def spawn(argv: list[str]) -> Proc:
                return children.spawn("consumer", argv, stdout_pipe=True)

            for round_ in range(args.rounds):
                messages = build_messages(args.events, f"r{round_}t")
                for consumer in together if round_ % 2 == 0 else reversed(together):
                    keep(
                        f"one_process.{consumer}",
                        await run_one_process(
                            nc, server, messages, publisher, consumer, args.window
                        ),
                    )
                    keep(
                        f"two_processes.{consumer}",
                        await run_two_processes(
                            nc, server, spawn, messages, publisher, consumer, args.window
                        ),
                    )
                    children.stop_all()
    finally:
        await nc.close()
    return {
        "publisher": publisher,
        "median": {name: _median(results) for name, results in rounds.items()},
        "rounds": rounds,
    }


def _fastest(rounds: dict[str, list[dict[str, Any]]], kind: str) -> str:
    rates = {
        name.split(".", 1)[1]: statistics.median(r["events_per_s"] for r in results)
        for name, results in rounds.items()
        if name.startswith(f"{kind}.")
    }
    return max(rates, key=lambda name: rates[name])


def _median(results: list[dict[str, Any]]) -> dict[str, Any]:
    keys = results[0]["cpu_us_per_event"].keys()
    return {
        "events_per_s": round(statistics.median(r["events_per_s"] for r in results)),
        "cpu_us_per_event": {
            key: round(statistics.median(r["cpu_us_per_event"][key] for r in results), 1)
            for key in keys
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=int, default=4096, help="pipelined: acks outstanding")
    parser.add_argument("--role", choices=("main", "consumer"), default="main")
    parser.add_argument("--url", help="consumer role: the nats-server")
    parser.add_argument("--consumer", choices=tuple(CONSUMERS), default="raw")
    args = parser.parse_args()
    if args.role == "consumer":
        uvloop.run(consumer_role(args.url, args.consumer, args.events))
        return
    workdir = Path(tempfile.mkdtemp(prefix="kgents-bench-floor-"))
    try:
        started = time.perf_counter()
        with processes(workdir) as registry:
            server = start_nats(registry, workdir / "jetstream")
            result = uvloop.run(measure(args, server, workdir))
        sample = build_messages(1, "size")[0][0]
        print(
            json.dumps(
                {
                    "bench": "floor_ingest",
                    "date": datetime.now(UTC).isoformat(timespec="seconds"),
                    "machine": {**machine(), "load_average_1m": round(os.getloadavg()[0], 2)},
                    "nats_py": version("nats-py"),
                    "events": args.events,
                    "payload_bytes": len(sample),
                    "fetch_batch": FETCH,
                    "window": args.window,
                    **result,
                    "wall_s": round(time.perf_counter() - started, 1),
                }
            )
        )
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
