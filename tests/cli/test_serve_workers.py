"""``kgents serve --workers N``: N processes serve one port, each a full replica, sharing the
embedded nats-server that their parent runs."""

import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from kgents.cli.main import app
from kgents.cli.processes import cpu_quota, worker_count
from kgents.streaming.nats_process import process_alive
from tests.conftest import ADMIN_TOKEN
from tests.support.servers import ServerProcess
from tests.support.sse import read_events
from tests.support.waiting import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
WORKER = "x-kgents-worker"
# The server is healthy once one worker answers; the others may still be starting (0.2 s
# later on a quiet machine, more under load): connections are opened until each answered one.
WORKERS_START_SECONDS = 60.0


async def open_follower(
    stack: contextlib.AsyncExitStack, base_url: str, path: str, key: str
) -> httpx.Response:
    """``GET path`` as an open SSE response on a connection of its own."""
    client = await stack.enter_async_context(httpx.AsyncClient(base_url=base_url, timeout=60))
    request = client.build_request("GET", path, headers={"X-API-Key": key})
    response = await client.send(request, stream=True)
    stack.push_async_callback(response.aclose)
    assert response.status_code == 200, await response.aread()
    return response


async def followed_text(response: httpx.Response) -> str:
    text = []
    async for event in read_events(response):
        if event.event == "chunk":
            text.append(event.data["text"])
        elif event.event in ("complete", "error"):
            assert event.event == "complete", event.data
            return "".join(text)
    raise AssertionError("the follow ended before the turn did")


@contextlib.asynccontextmanager
async def followers_on_each_worker(
    base_url: str, path: str, key: str, *, workers: int
) -> AsyncIterator[dict[str, httpx.Response]]:
    """One open follower per worker process (by ``X-Kgents-Worker``), each on a connection of
    its own; connections are opened until every worker has answered one."""
    async with contextlib.AsyncExitStack() as kept:
        followers: dict[str, httpx.Response] = {}

        async def every_worker_follows() -> bool:
            async with contextlib.AsyncExitStack() as attempt:
                response = await open_follower(attempt, base_url, path, key)
                if response.headers[WORKER] not in followers:
                    followers[response.headers[WORKER]] = response
                    kept.push_async_exit(attempt.pop_all())
            return len(followers) == workers

        await eventually(every_worker_follows, seconds=WORKERS_START_SECONDS)
        yield followers


async def test_a_follower_on_one_worker_sees_a_turn_started_on_another(
    tmp_path: Path, database_url: str
) -> None:
    env = {
        "KGENTS_WORKERS": "2",
        "KGENTS_DATABASE_URL": database_url,
        "KGENTS_ADMIN_TOKEN": ADMIN_TOKEN,
        "KGENTS_DEMO_TOKEN_DELAY_MS": "5",
    }
    data_dir = tmp_path / "data"
    with ServerProcess(data_dir, env) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            tenant = await client.post(
                "/v1/tenants", json={"name": "acme", "plan": "pro"}, headers=ADMIN
            )
            tenant_id = tenant.json()["id"]
            created = await client.post(
                f"/v1/tenants/{tenant_id}/keys", json={"name": "w"}, headers=ADMIN
            )
            key = created.json()["key"]
            session = await client.post("/v1/kgent/sessions", json={}, headers={"X-API-Key": key})
            session_id = session.json()["id"]
            path = f"/v1/kgent/sessions/{session_id}"
            async with followers_on_each_worker(
                server.base_url, f"{path}/events", key, workers=2
            ) as followers:
                reply = await client.post(
                    f"{path}/messages",
                    json={"message": "hello from one worker", "stream": False},
                    headers={"X-API-Key": key},
                )
                assert reply.status_code == 201, reply.text
                starter = reply.headers[WORKER]
                assert starter in followers
                for worker, follower in followers.items():
                    assert await followed_text(follower) == reply.json()["content"], worker
                assert any(worker != starter for worker in followers)
        embedded_state = data_dir / "nats.json"
        assert embedded_state.exists()  # the parent's embedded nats-server, shared
    assert not embedded_state.exists()  # stopped by the parent once the workers had stopped


async def worker_pids(base_url: str, *, workers: int) -> set[str]:
    """The pids of the workers behind ``base_url``, from ``X-Kgents-Worker`` (a connection
    per request, until each worker answered one)."""
    seen: set[str] = set()
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:

        async def every_worker_answered() -> bool:
            response = await client.get("/health/live", headers={"Connection": "close"})
            seen.add(response.headers[WORKER])
            return len(seen) == workers

        await eventually(every_worker_answered, seconds=WORKERS_START_SECONDS, every=0.01)
    return seen


async def test_workers_stop_when_their_parent_is_killed(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir, {"KGENTS_WORKERS": "2", "KGENTS_ADMIN_TOKEN": ADMIN_TOKEN})
    server.start()
    try:
        pids = await worker_pids(server.base_url, workers=2)
        server.kill()  # SIGKILL: the parent cannot stop its workers

        async def orphans_gone() -> bool:
            return not any(process_alive(int(pid)) for pid in pids)

        await eventually(orphans_gone, seconds=30)
    finally:
        server.stop()
        # The embedded nats-server outlives a killed parent by design (the next start adopts
        # it); this test stops it.
        state = data_dir / "nats.json"
        if state.exists():
            os.kill(json.loads(state.read_text())["pid"], signal.SIGTERM)


def test_workers_must_be_a_count_or_auto(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["serve", "--data-dir", str(tmp_path), "--workers", "0"], catch_exceptions=False
    )
    assert result.exit_code == 2
    assert "--workers" in result.output


def test_auto_is_one_worker_per_usable_cpu_within_a_cpu_limit() -> None:
    assert worker_count(3) == 3
    assert 1 <= worker_count("auto") <= len(os.sched_getaffinity(0))
    assert cpu_quota("max 100000\n") is None  # no limit
    assert cpu_quota("150000 100000\n") == 2  # 1.5 CPUs: a second worker may use the half
    assert cpu_quota("50000 100000") == 1
    assert cpu_quota("") is None
