"""The embedded nats-server: start/stop, adoption after its owner died, restart after a crash."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kgents.errors import EventsUnavailable
from kgents.ids import new_id
from kgents.sessions.ports import SessionEvent
from kgents.streaming.bridge import JetStreamEventLog
from kgents.streaming.connection import NatsConnection
from kgents.streaming.embedded import EmbeddedNats
from kgents.streaming.nats_process import find_nats_server, free_port, process_alive
from kgents.streaming.topology import ensure_streams
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio

OWNER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from kgents.streaming.embedded import EmbeddedNats

    async def main() -> None:
        await EmbeddedNats(Path(sys.argv[1]), supervise=False).start()
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def kill_pid(pid: int | None) -> None:
    if pid is not None and process_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def dead_owner(data_dir: Path) -> Iterator[dict[str, object]]:
    """Start the embedded server from another process, then SIGKILL that process.

    Yields the state the owner wrote; its nats-server keeps running, and is killed at the end
    of the block if the test did not stop it.
    """
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER_SCRIPT, str(data_dir)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    state: dict[str, object] = {}
    try:
        deadline = time.monotonic() + 10
        state_path = data_dir / "nats.json"
        while not state_path.exists():
            assert owner.poll() is None, "the owner process died at start-up"
            assert time.monotonic() < deadline, "the owner did not start nats-server"
            time.sleep(0.02)
        state.update(json.loads(state_path.read_text()))
        owner.send_signal(signal.SIGKILL)
        owner.wait(5)
        yield state
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(5)
        server_pid = state.get("pid")
        kill_pid(server_pid if isinstance(server_pid, int) else None)


def test_the_binary_is_found() -> None:
    binary = find_nats_server()
    assert binary.name == "nats-server"
    assert os.access(binary, os.X_OK)


async def test_start_and_stop(tmp_path: Path) -> None:
    embedded = EmbeddedNats(tmp_path)
    url = await embedded.start()
    pid = embedded.pid
    try:
        assert url == f"nats://127.0.0.1:{embedded.port}"
        assert pid is not None and process_alive(pid)
        assert (tmp_path / "nats.pid").read_text().strip() == str(pid)
        state = json.loads((tmp_path / "nats.json").read_text())
        assert state["pid"] == pid
        assert state["store_dir"] == str(embedded.store_dir)
        assert embedded.store_dir.name == "jetstream"
        conn = await NatsConnection.connect(url, auth=embedded.auth)
        try:
            await ensure_streams(conn, replicas=1)
        finally:
            await conn.close()
        assert await embedded.start() == url  # already running: same server
    finally:
        await embedded.stop()
    assert not process_alive(pid)
    assert not (tmp_path / "nats.json").exists()
    assert not (tmp_path / "nats.pid").exists()
    await embedded.stop()  # twice is harmless


async def test_one_store_one_server(tmp_path: Path) -> None:
    async with EmbeddedNats(tmp_path, supervise=False) as first:
        with pytest.raises(EventsUnavailable):
            await EmbeddedNats(tmp_path).start()
        assert first.pid is not None and process_alive(first.pid)
    async with EmbeddedNats(tmp_path, supervise=False):
        pass  # free again once the first one stopped


async def test_a_leftover_server_is_adopted_after_its_owner_died(tmp_path: Path) -> None:
    with dead_owner(tmp_path) as state:
        assert isinstance(state["pid"], int) and process_alive(state["pid"])
        embedded = EmbeddedNats(tmp_path)
        url = await embedded.start()
        try:
            assert embedded.adopted
            assert embedded.pid == state["pid"]
            assert url == f"nats://127.0.0.1:{state['port']}"
            conn = await NatsConnection.connect(url, auth=embedded.auth)
            await conn.close()
        finally:
            await embedded.stop()
        assert not process_alive(state["pid"])


async def test_an_unresponsive_leftover_is_replaced(tmp_path: Path) -> None:
    with dead_owner(tmp_path) as state:
        old_pid = state["pid"]
        assert isinstance(old_pid, int)
        # Our nats-server, alive, but not answering where the state file says it listens.
        elsewhere = {**state, "port": free_port()}
        (tmp_path / "nats.json").write_text(json.dumps(elsewhere))
        embedded = EmbeddedNats(tmp_path, stop_seconds=1.0, start_seconds=5.0)
        try:
            url = await embedded.start()
            assert not embedded.adopted
            assert embedded.pid != old_pid
            assert not process_alive(old_pid)
            assert url == f"nats://127.0.0.1:{elsewhere['port']}"  # the recorded URL is kept
            conn = await NatsConnection.connect(url, auth=embedded.auth)
            await conn.close()
        finally:
            await embedded.stop()


async def test_a_crashed_server_is_restarted_with_its_data(tmp_path: Path) -> None:
    async with EmbeddedNats(tmp_path) as embedded:
        conn = await NatsConnection.connect(embedded.url, auth=embedded.auth)
        try:
            await ensure_streams(conn, replicas=1)
            log = JetStreamEventLog(conn)
            session_id = new_id("ses")
            seq = await log.publish(SessionEvent(session_id=session_id, type="complete"))
            first_pid = embedded.pid
            assert first_pid is not None
            os.kill(first_pid, signal.SIGKILL)

            async def restarted() -> bool:
                return embedded.restarts == 1 and conn.is_connected

            await eventually(restarted, seconds=8)
            assert embedded.pid != first_pid
            assert await log.last_sequence(session_id) == seq
            assert await log.publish(SessionEvent(session_id=session_id, type="complete")) > seq
        finally:
            await conn.close()
        stopped_pid = embedded.pid
    assert stopped_pid is not None and not process_alive(stopped_pid)


async def test_a_start_failure_is_reported(tmp_path: Path) -> None:
    blocker = EmbeddedNats(tmp_path / "a", supervise=False)
    clash = EmbeddedNats(tmp_path / "b", start_seconds=3.0)
    try:
        await blocker.start()
        clash = EmbeddedNats(tmp_path / "b", port=blocker.port, start_seconds=3.0)
        with pytest.raises(EventsUnavailable, match="exited at start-up"):
            await clash.start()
        assert clash.pid is None
    finally:
        await clash.stop()
        await blocker.stop()
