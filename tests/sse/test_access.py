"""Open streams end when their access does: key revoked or expired, tenant suspended."""

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kgents.config import Settings
from kgents.platform import open_platform
from tests.conftest import ADMIN_TOKEN
from tests.sse.conftest import BOTH_DATABASES, Live, settings_for_live
from tests.support.sse import SseEvent, read_events
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
END_SECONDS = 15.0  # far above the 1 s re-check interval, for a loaded machine


@pytest.fixture
def live_settings(tmp_path: Path, nats_url: str, live_database: str) -> Settings:
    # Re-checks every second; replies slow enough (>= 4 s) to be cut off halfway.
    return settings_for_live(
        tmp_path, nats_url, live_database, demo_token_delay_ms=100, api_key_cache_seconds=1
    )


async def tenant_id_of(live: Live) -> str:
    [tenant] = (await live.client.get("/v1/tenants", headers=ADMIN)).json()["tenants"]
    tenant_id: str = tenant["id"]
    return tenant_id


async def new_key(live: Live, **body: str) -> tuple[str, str]:
    tenant_id = await tenant_id_of(live)
    response = await live.client.post(f"/v1/tenants/{tenant_id}/keys", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()["id"], response.json()["key"]


class Followed:
    """The events of one open stream, read in a task until the server ends it."""

    def __init__(self) -> None:
        self.events: list[SseEvent] = []
        self.task: asyncio.Task[None] | None = None

    @property
    def last(self) -> SseEvent:
        return self.events[-1]

    async def ended(self) -> None:
        assert self.task is not None
        await eventually(self._done, seconds=END_SECONDS)
        await self.task

    async def _done(self) -> bool:
        return self.task is not None and self.task.done()


async def follow(live: Live, method: str, path: str, key: str, **kwargs: object) -> Followed:
    followed = Followed()
    opened = asyncio.Event()

    async def read() -> None:
        async with live.client.stream(
            method, path, headers={"X-API-Key": key}, timeout=60, **kwargs
        ) as response:
            assert response.status_code == 200, await response.aread()
            opened.set()
            async for event in read_events(response):
                followed.events.append(event)

    followed.task = asyncio.create_task(read())
    waiting = asyncio.create_task(opened.wait())
    await asyncio.wait([followed.task, waiting], timeout=10, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if followed.task.done():
        await followed.task  # raises why it did not open
    assert opened.is_set()
    return followed


@pytest.fixture
async def stream(live: Live) -> AsyncIterator[list[Followed]]:
    """Streams opened by a test; cancelled at its end if the server did not end them."""
    streams: list[Followed] = []
    yield streams
    for followed in streams:
        if followed.task is not None and not followed.task.done():
            followed.task.cancel()
            await asyncio.gather(followed.task, return_exceptions=True)


@pytest.mark.parametrize("live_database", BOTH_DATABASES, indirect=True)
async def test_events_stream_ends_when_another_process_revokes_its_key(
    live: Live, stream: list[Followed]
) -> None:
    session_id = await live.new_session()
    key_id, key = await new_key(live)
    followed = await follow(live, "GET", f"/v1/kgent/sessions/{session_id}/events", key)
    stream.append(followed)
    async with open_platform(live.settings, migrate=False) as other_process:
        await other_process.tenancy.revoke_api_key(key_id=key_id)
    # Activity after the revoke: a message by another key of the tenant.
    posted = await live.client.post(
        f"/v1/kgent/sessions/{session_id}/messages",
        json={"message": "after the revoke", "budget": "dormant", "stream": False},
        headers=live.headers,
    )
    assert posted.status_code == 201, posted.text
    await followed.ended()
    assert followed.last.event == "error"
    assert followed.last.data["error"]["code"] == "key_revoked"


async def test_events_stream_ends_when_the_tenant_is_suspended(
    live: Live, stream: list[Followed]
) -> None:
    session_id = await live.new_session()
    followed = await follow(live, "GET", f"/v1/kgent/sessions/{session_id}/events", live.key)
    stream.append(followed)
    tenant_id = await tenant_id_of(live)
    suspended = await live.client.patch(
        f"/v1/tenants/{tenant_id}", json={"status": "suspended"}, headers=ADMIN
    )
    assert suspended.status_code == 200
    await followed.ended()
    assert followed.last.data["error"]["code"] == "tenant_suspended"


async def test_events_stream_ends_when_its_key_expires(live: Live, stream: list[Followed]) -> None:
    session_id = await live.new_session()
    expires_at = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    _, key = await new_key(live, expires_at=expires_at)
    followed = await follow(live, "GET", f"/v1/kgent/sessions/{session_id}/events", key)
    stream.append(followed)
    await followed.ended()
    assert followed.last.data["error"]["code"] == "key_expired"


async def test_a_streamed_reply_ends_when_its_key_is_revoked(
    live: Live, stream: list[Followed]
) -> None:
    session_id = await live.new_session()
    key_id, key = await new_key(live)
    path = f"/v1/kgent/sessions/{session_id}/messages"
    followed = await follow(live, "POST", path, key, json={"message": "Tell me more"})
    stream.append(followed)

    async def first_chunk() -> bool:
        return any(event.event == "chunk" for event in followed.events)

    await eventually(first_chunk, seconds=10)
    tenant_id = await tenant_id_of(live)
    revoked = await live.client.delete(f"/v1/tenants/{tenant_id}/keys/{key_id}", headers=ADMIN)
    assert revoked.status_code == 200
    await followed.ended()
    kinds = [event.event for event in followed.events]
    assert "complete" not in kinds
    assert followed.last.data["error"]["code"] == "key_revoked"
    # The turn itself runs on (stored and billed); stop it rather than wait for it.
    cancel = await live.client.post(f"/v1/kgent/sessions/{session_id}/cancel", headers=live.headers)
    assert cancel.status_code in (200, 409)
