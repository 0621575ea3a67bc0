"""Failures of whole processes: SIGKILL of the API mid-turn, two replicas, a NATS outage."""

import asyncio
import os
import signal
import sqlite3
from pathlib import Path

import httpx
import pytest

from kgents.llm.base import estimate_tokens
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.support.nats import NatsServer
from tests.support.servers import ServerProcess, server_in_thread
from tests.support.sse import SseEvent, assert_every_token_once, read_events
from tests.support.waiting import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def server_env(database_url: str, nats_url: str, **extra: str) -> dict[str, str]:
    return {
        "KGENTS_DATABASE_URL": database_url,
        "KGENTS_NATS_URL": nats_url,
        "KGENTS_ADMIN_TOKEN": ADMIN_TOKEN,
        "KGENTS_DEMO_TOKEN_DELAY_MS": "60",
        "KGENTS_TURN_LEASE_SECONDS": "2",
        **extra,
    }


async def tenant_key_session(client: httpx.AsyncClient) -> tuple[dict[str, str], str]:
    tenant = await client.post("/v1/tenants", json={"name": "acme", "plan": "pro"}, headers=ADMIN)
    key = await client.post(f"/v1/tenants/{tenant.json()['id']}/keys", json={}, headers=ADMIN)
    headers = {"X-API-Key": key.json()["key"]}
    session = await client.post("/v1/kgent/sessions", json={}, headers=headers)
    return headers, session.json()["id"]


async def read_until(
    client: httpx.AsyncClient, method: str, url: str, *, stop_after_chunk: int | None, **kwargs
) -> list[SseEvent]:  # type: ignore[no-untyped-def]
    got: list[SseEvent] = []
    async with client.stream(method, url, **kwargs) as response:
        assert response.status_code == 200, await response.aread()
        async for event in read_events(response):
            got.append(event)
            if event.event in ("complete", "error"):
                break
            if stop_after_chunk is not None and event.data.get("index", -1) >= stop_after_chunk:
                break
    return got


async def test_sigkill_mid_turn_then_restart_and_resume(tmp_path: Path, nats_url: str) -> None:
    database = tmp_path / "kgents.db"
    env = server_env(f"sqlite:///{database}", nats_url)
    first = ServerProcess(tmp_path / "data", env).start()
    try:
        async with httpx.AsyncClient(base_url=first.base_url, timeout=30) as client:
            headers, session_id = await tenant_key_session(client)
            seen = await read_until(
                client,
                "POST",
                f"/v1/kgent/sessions/{session_id}/messages",
                stop_after_chunk=5,
                json={"message": "this process will die"},
                headers=headers,
            )
    finally:
        first.kill()

    with ServerProcess(tmp_path / "data", env, port=first.port) as second:
        async with httpx.AsyncClient(base_url=second.base_url, timeout=30) as client:
            rest = await read_until(
                client,
                "GET",
                f"/v1/kgent/sessions/{session_id}/events",
                stop_after_chunk=None,
                headers={**headers, "Last-Event-ID": str(seen[-1].id)},
            )
            messages = (
                await client.get(f"/v1/kgent/sessions/{session_id}/messages", headers=headers)
            ).json()["messages"]

    assert rest[-1].event == "error" and rest[-1].data["error"]["code"] == "interrupted"
    chunks = [e for e in seen + rest if e.event == "chunk"]
    assert messages[-1]["role"] == "assistant"
    assert_every_token_once(
        [c.data["index"] for c in chunks], [c.data["text"] for c in chunks], messages[-1]["content"]
    )
    assert (messages[-1]["status"], messages[-1]["error_code"]) == ("interrupted", "interrupted")
    with sqlite3.connect(database) as db:
        status, tokens_out, estimated = db.execute(
            "SELECT status, tokens_out, estimated FROM turns"
        ).fetchone()
    assert status == "interrupted" and estimated == 1
    assert tokens_out == estimate_tokens(messages[-1]["content"])  # the one estimator


@pytest.mark.parametrize(("grace", "stored"), [("30", "complete"), ("0", "cancelled")])
async def test_sigterm_lets_running_turns_finish_within_the_shutdown_grace(
    tmp_path: Path, nats_url: str, grace: str, stored: str
) -> None:
    database = tmp_path / "kgents.db"
    env = server_env(f"sqlite:///{database}", nats_url, KGENTS_SHUTDOWN_GRACE_SECONDS=grace)
    server = ServerProcess(tmp_path / "data", env).start()
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            headers, session_id = await tenant_key_session(client)
            # The client leaves after a few chunks; the turn goes on, detached from the request.
            await read_until(
                client,
                "POST",
                f"/v1/kgent/sessions/{session_id}/messages",
                stop_after_chunk=2,
                json={"message": "this process is being stopped"},
                headers=headers,
            )
    finally:
        server.stop()  # SIGTERM, as Kubernetes stops a pod
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT status FROM turns").fetchall() == [(stored,)]


async def test_two_replicas_share_sessions(
    tmp_path: Path, nats_url: str, postgres_server_url: str
) -> None:
    from tests.support.postgres import create_database, drop_database

    database_url = await create_database(postgres_server_url)
    env = server_env(database_url, nats_url)
    try:
        with (
            ServerProcess(tmp_path / "a", env) as replica_a,
            ServerProcess(tmp_path / "b", env) as replica_b,
        ):
            async with (
                httpx.AsyncClient(base_url=replica_a.base_url, timeout=30) as a,
                httpx.AsyncClient(base_url=replica_b.base_url, timeout=30) as b,
            ):
                headers, session_id = await tenant_key_session(a)
                started = await read_until(
                    a,
                    "POST",
                    f"/v1/kgent/sessions/{session_id}/messages",
                    stop_after_chunk=3,
                    json={"message": "start here"},
                    headers=headers,
                )
                resumed = await read_until(
                    b,
                    "GET",
                    f"/v1/kgent/sessions/{session_id}/events",
                    stop_after_chunk=None,
                    headers={**headers, "Last-Event-ID": str(started[-1].id)},
                )
                assert resumed[-1].event == "complete"
                chunks = [e for e in started + resumed if e.event == "chunk"]
                assert_every_token_once(
                    [c.data["index"] for c in chunks],
                    [c.data["text"] for c in chunks],
                    resumed[-1].data["text"],
                )

                # A cancel sent to B stops the turn A is generating.
                second = a.stream(
                    "POST",
                    f"/v1/kgent/sessions/{session_id}/messages",
                    json={"message": "cancel me from the other replica"},
                    headers=headers,
                )
                async with second as response:
                    events: list[SseEvent] = []
                    cancelled = False
                    async for event in read_events(response):
                        events.append(event)
                        if event.event == "chunk" and event.data["index"] >= 1 and not cancelled:
                            cancel = await b.post(
                                f"/v1/kgent/sessions/{session_id}/cancel", headers=headers
                            )
                            assert cancel.status_code == 200
                            cancelled = True
                assert events[-1].event == "error"
                assert events[-1].data["error"]["code"] == "cancelled"
    finally:
        await drop_database(postgres_server_url, database_url)


async def test_nats_outage_gives_clean_503_and_recovers(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "nats") as nats:
        settings = make_settings(
            tmp_path / "data",
            f"sqlite:///{tmp_path / 'kgents.db'}",
            nats.url,
            demo_token_delay_ms=50,
            nats_failover_seconds=2.0,  # an outage longer than the failover window
        )
        with server_in_thread(settings) as base_url:
            async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
                headers, session_id = await tenant_key_session(client)
                path = f"/v1/kgent/sessions/{session_id}/messages"
                events: list[SseEvent] = []
                stopped = False
                async with client.stream(
                    "POST", path, json={"message": "outage ahead"}, headers=headers
                ) as response:
                    async for event in read_events(response):
                        events.append(event)
                        if event.event == "chunk" and event.data["index"] >= 2 and not stopped:
                            nats.stop()
                            stopped = True
                # The stream ended with an error event rather than hanging.
                assert events[-1].event == "error"

                refused = await client.post(
                    path, json={"message": "now?", "stream": False}, headers=headers
                )
                assert refused.status_code == 503
                assert refused.json()["error"]["code"] == "events_unavailable"
                health = await client.get("/health")
                assert health.status_code == 503 and health.json()["components"]["nats"] == "down"

                nats.start()

                async def healthy() -> bool:
                    return (await client.get("/health")).status_code == 200

                await eventually(healthy, seconds=20)
                ok = await client.post(
                    path, json={"message": "again", "stream": False}, headers=headers
                )
                assert ok.status_code == 201, ok.text
                messages = (await client.get(path, headers=headers)).json()["messages"]
                # The turn cut by the outage kept its partial reply; the refused one left nothing.
                assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
                partial = "".join(e.data["text"] for e in events if e.event == "chunk")
                assert messages[1]["content"].startswith(partial)

                # Followers of the cut turn get its end too, once the stream is back.
                cut_turn = events[0].data["turn_id"]
                ends: dict[str, str] = {}
                async with asyncio.timeout(30):
                    async with client.stream(
                        "GET",
                        f"/v1/kgent/sessions/{session_id}/events",
                        params={"from": "start"},
                        headers=headers,
                    ) as replay:
                        async for event in read_events(replay):
                            if event.event in ("complete", "error"):
                                ends[event.data["turn_id"]] = event.event
                            if len(ends) == 2:
                                break
                assert ends[cut_turn] == "error"


def nats_servers_on(store_dir: Path) -> list[int]:
    """PIDs of nats-server processes running on ``store_dir``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"nats-server") and str(store_dir).encode() in args:
            pids.append(int(proc.name))
    return pids


async def test_sigkill_with_the_embedded_nats_server_restarts_cleanly(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = server_env(f"sqlite:///{tmp_path / 'kgents.db'}", nats_url="")  # "": embedded
    first = ServerProcess(data_dir, env).start()
    async with httpx.AsyncClient(base_url=first.base_url, timeout=30) as client:
        headers, session_id = await tenant_key_session(client)
        before = await read_until(
            client,
            "POST",
            f"/v1/kgent/sessions/{session_id}/messages",
            stop_after_chunk=None,
            json={"message": "before the crash"},
            headers=headers,
        )
    first.kill()
    store = (data_dir / "jetstream").resolve()
    assert len(nats_servers_on(store)) == 1  # left behind by the killed API
    try:
        with ServerProcess(data_dir, env, port=first.port) as second:
            assert len(nats_servers_on(store)) == 1  # reused or replaced, never duplicated
            async with httpx.AsyncClient(base_url=second.base_url, timeout=30) as client:
                replay = await read_until(
                    client,
                    "GET",
                    f"/v1/kgent/sessions/{session_id}/events?from=start",
                    stop_after_chunk=None,
                    headers=headers,
                )
        assert [e.id for e in replay] == [e.id for e in before]  # the store survived
        assert nats_servers_on(store) == []  # a clean stop takes the embedded server with it
    finally:
        for pid in nats_servers_on(store):
            os.kill(pid, signal.SIGKILL)
