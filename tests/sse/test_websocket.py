"""The WebSocket gateway to sessions, with a real WebSocket client against real servers."""

import json
import socket
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from kgents.config import Settings
from tests.conftest import ADMIN_TOKEN
from tests.sse.conftest import Live, settings_for_live
from tests.sse.test_access import new_key, tenant_id_of
from tests.sse.test_failures import server_env
from tests.support.servers import ServerProcess, server_in_thread
from tests.support.sse import assert_every_token_once
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio


def socket_url(base_url: str, session_id: str, query: str = "") -> str:
    return f"ws{base_url.removeprefix('http')}/v1/kgent/sessions/{session_id}/ws{query}"


async def frames_until(
    socket: ClientConnection, stop: str = "complete", after_chunks: int | None = None
) -> list[dict[str, Any]]:
    """Frames up to the first ``stop`` event (or ``after_chunks`` chunks)."""
    frames: list[dict[str, Any]] = []
    chunks = 0
    async for text in socket:
        frame = json.loads(text)
        frames.append(frame)
        chunks += frame["event"] == "chunk"
        if frame["event"] == stop or frames[-1]["event"] == "error" or chunks == after_chunks:
            break
    return frames


async def closed_with(socket: ClientConnection) -> tuple[dict[str, Any], int | None]:
    """The error frame the server sent before closing, and the close code."""
    frames = []
    with pytest.raises(ConnectionClosed):
        async for text in socket:
            frames.append(json.loads(text))
    assert len(frames) == 1, frames
    return frames[0], socket.close_code


@pytest.fixture
async def session(live: Live) -> str:
    return await live.new_session()


async def test_a_turn_streams_over_the_socket(live: Live, session: str) -> None:
    async with connect(socket_url(live.base_url, session)) as socket:
        await socket.send(json.dumps({"type": "auth", "key": live.key}))
        await socket.send(json.dumps({"type": "message", "message": "hello over a socket"}))
        frames = await frames_until(socket)
    events = [frame["event"] for frame in frames]
    assert events[0] == "user_message" and events[-1] == "complete"
    assert set(events[1:-1]) == {"chunk"}
    ids = [frame["id"] for frame in frames]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert frames[0]["data"]["content"] == "hello over a socket"
    with sqlite3.connect(live.settings.database_url.removeprefix("sqlite:///")) as database:
        metered = database.execute(
            "SELECT data FROM usage_outbox WHERE type = 'api.request' AND data LIKE '%/ws%'"
        ).fetchall()
    assert [json.loads(data) for (data,) in metered] == [
        {"endpoint": "/v1/kgent/sessions/{session_id}/ws", "method": "WS", "status_code": 200}
    ]
    history = await live.client.get(f"/v1/kgent/sessions/{session}/messages", headers=live.headers)
    reply = history.json()["messages"][-1]
    assert reply["content"] == "".join(f["data"]["text"] for f in frames if f["event"] == "chunk")


async def test_resume_after_a_dropped_connection_on_another_process(
    live: Live, live_settings: Settings, session: str, tmp_path: Path
) -> None:
    """Two servers on one database and one NATS, the second one ``kgents serve`` in a process
    of its own: the reply started on A ends on B."""
    assert live_settings.database_url and live_settings.nats_url
    env = server_env(live_settings.database_url, live_settings.nats_url)
    with ServerProcess(tmp_path / "other", env) as other:
        headers = {"X-API-Key": live.key}
        async with connect(socket_url(live.base_url, session), additional_headers=headers) as a:
            await a.send(json.dumps({"type": "message", "message": "start on A"}))
            started = await frames_until(a, after_chunks=3)
        resume = f"?after={started[-1]['id']}"
        url = socket_url(other.base_url, session, resume)
        async with connect(url, additional_headers=headers) as b:
            resumed = await frames_until(b)
    assert resumed[-1]["event"] == "complete"
    chunks = [f for f in started + resumed if f["event"] == "chunk"]
    assert_every_token_once(
        [chunk["data"]["index"] for chunk in chunks],
        [chunk["data"]["text"] for chunk in chunks],
        resumed[-1]["data"]["text"],
    )


async def test_cancel_over_the_socket(live: Live, session: str) -> None:
    headers = {"Authorization": f"Bearer {live.key}"}
    async with connect(socket_url(live.base_url, session), additional_headers=headers) as socket:
        await socket.send(json.dumps({"type": "message", "message": "cancel me"}))
        await frames_until(socket, after_chunks=1)
        await socket.send(json.dumps({"type": "cancel"}))
        frames = await frames_until(socket)
        assert frames[-1]["event"] == "error" and "id" in frames[-1]
        assert frames[-1]["data"]["error"]["code"] == "cancelled"
        # The connection stays open: the next turn streams on it.
        await socket.send(json.dumps({"type": "message", "message": "and now finish"}))
        assert (await frames_until(socket))[-1]["event"] == "complete"


async def test_a_bad_key_is_an_error_frame_and_a_close(live: Live, session: str) -> None:
    async with connect(socket_url(live.base_url, session)) as socket:
        await socket.send(json.dumps({"type": "auth", "key": "kg_live_" + "x" * 32}))
        frame, code = await closed_with(socket)
    assert frame == {
        "event": "error",
        "data": {"error": {"code": "unauthorized", "message": "invalid API key"}},
    }
    assert code == 4401
    async with connect(socket_url(live.base_url, session)) as socket:
        await socket.send(json.dumps({"type": "message", "message": "no auth first"}))
        frame, code = await closed_with(socket)
    assert frame["data"]["error"]["code"] == "unauthorized" and code == 4401


async def test_another_tenants_session_is_not_found(live: Live, session: str) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    tenant = await live.client.post("/v1/tenants", json={"name": "other"}, headers=admin)
    key = await live.client.post(f"/v1/tenants/{tenant.json()['id']}/keys", json={}, headers=admin)
    headers = {"X-API-Key": key.json()["key"]}
    async with connect(socket_url(live.base_url, session), additional_headers=headers) as socket:
        frame, code = await closed_with(socket)
    assert frame["data"]["error"]["code"] == "not_found" and code == 4404
    missing = await live.client.get(f"/v1/kgent/sessions/{session}", headers=headers)
    assert missing.status_code == 404


async def test_the_openapi_document_describes_the_socket(live: Live) -> None:
    document = (await live.client.get("/openapi.json")).json()
    [sessions] = [tag for tag in document["tags"] if tag["name"] == "sessions"]
    assert "/v1/kgent/sessions/{id}/ws" in sessions["description"]


def unread_socket(base_url: str, path: str, key: str) -> socket.socket:
    """A WebSocket client that opens the connection and then never reads (a small receive
    window, so the server's buffers fill soon)."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(30)
    raw.connect(("127.0.0.1", int(base_url.rsplit(":", 1)[1])))
    handshake = (
        f"GET {path} HTTP/1.1\r\nHost: kgents.test\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\nX-API-Key: {key}\r\n\r\n"
    )
    raw.sendall(handshake.encode())
    return raw


async def test_a_client_that_does_not_read_is_let_go(
    tmp_path: Path, nats_url: str, live_database: str
) -> None:
    """The server stops sending to a client that does not read and lets the connection go
    (its follower closed), instead of buffering the session's replay for it."""
    settings = settings_for_live(
        tmp_path, nats_url, live_database, demo_token_delay_ms=0, ws_send_timeout_seconds=1
    )
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with server_in_thread(settings, send_buffer_bytes=4096) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            tenant = await client.post("/v1/tenants", json={"name": "slow"}, headers=admin)
            created = await client.post(
                f"/v1/tenants/{tenant.json()['id']}/keys", json={}, headers=admin
            )
            key = created.json()["key"]
            session = (await client.post("/v1/kgent/sessions", headers={"X-API-Key": key})).json()
            replay = 0
            for _ in range(8):  # 256 KB of user messages: more than the buffers hold
                sent = await client.post(
                    f"/v1/kgent/sessions/{session['id']}/messages",
                    json={"message": "x" * 32_000, "stream": False},
                    headers={"X-API-Key": key},
                )
                assert sent.status_code == 201, sent.text
                replay += 32_000

            async def followers_open() -> int:
                metrics = (await client.get("/metrics", headers=admin)).text
                [line] = [x for x in metrics.splitlines() if x.startswith("kgents_followers_open ")]
                return int(float(line.split()[1]))

            async def following() -> bool:
                return await followers_open() == 1

            async def let_go() -> bool:
                return await followers_open() == 0

            path = f"/v1/kgent/sessions/{session['id']}/ws?after=0"
            with unread_socket(base_url, path, key) as raw:
                await eventually(following, seconds=20)
                await eventually(let_go, seconds=30)  # the client has read nothing yet
                received = b""
                while chunk := raw.recv(65536):  # what was buffered, then the end
                    received += chunk
    assert 0 < len(received) < replay


async def test_a_revoked_key_ends_the_socket(live: Live, session: str) -> None:
    """The key is re-checked on a long connection, as on an SSE stream."""
    key_id, key = await new_key(live)
    tenant_id = await tenant_id_of(live)
    headers = {"X-API-Key": key}
    async with connect(socket_url(live.base_url, session), additional_headers=headers) as socket:
        await socket.send(json.dumps({"type": "message", "message": "hi", "budget": "dormant"}))
        await frames_until(socket)  # following, with the key accepted
        revoked = await live.client.delete(
            f"/v1/tenants/{tenant_id}/keys/{key_id}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert revoked.status_code == 200, revoked.text
        frame, code = await closed_with(socket)
    assert frame["data"]["error"]["code"] == "key_revoked" and code == 4403


async def test_a_frame_over_the_body_limit_closes_the_socket(live: Live, session: str) -> None:
    headers = {"X-API-Key": live.key}
    async with connect(
        socket_url(live.base_url, session), additional_headers=headers, max_size=None
    ) as socket:
        await socket.send(json.dumps({"type": "message", "message": "x" * 1_100_000}))
        with pytest.raises(ConnectionClosed):
            await socket.recv()
    assert socket.close_code == 1009
