"""The event bus is not a back door: the embedded server wants its token, the data dir is
private, and an external NATS is reached with a user and password, a token, or TLS."""

import asyncio
import contextlib
import os
import stat
import sys
from pathlib import Path

import pytest
import trustme

from kgents.config import Settings
from kgents.errors import EventsUnavailable, InvalidInput
from kgents.ids import new_id
from kgents.platform import open_platform
from kgents.sessions.ports import SessionEvent
from kgents.streaming.connection import NatsConnection
from kgents.streaming.embedded import EmbeddedNats, running_server
from kgents.streaming.nats_auth import NO_AUTH, split_credentials
from kgents.streaming.nats_process import process_alive
from kgents.streaming.runtime import open_streaming
from kgents.streaming.topology import ensure_streams
from kgents.tenancy.admin_token import load_or_create_admin_token
from tests.support.nats import nats_server
from tests.support.nats_jwt import operator_setup

pytestmark = pytest.mark.anyio

# Characters that must be percent-encoded in a URL's password.
PASSWORD = "p@ss:w/rd%1"
PASSWORD_IN_URL = "p%40ss%3Aw%2Frd%251"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def assert_refused(host: str, port: int) -> None:
    """A client without credentials (any local process) is refused: it gets no PONG."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        async with asyncio.timeout(5):
            assert (await reader.readline()).startswith(b"INFO ")
            writer.write(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
            await writer.drain()
            reply = await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    assert not reply.startswith(b"PONG"), reply
    assert reply == b"" or reply.startswith(b"-ERR"), reply


async def round_trip(settings: Settings) -> None:
    """kgents connects as configured, creates its streams, publishes and reads back."""
    async with open_streaming(settings) as streaming:
        session_id = new_id("ses")
        seq = await streaming.events.publish(SessionEvent(session_id=session_id, type="complete"))
        assert await streaming.events.last_sequence(session_id) == seq


async def test_the_embedded_server_refuses_clients_without_its_token(tmp_path: Path) -> None:
    async with EmbeddedNats(tmp_path, supervise=False) as embedded:
        await assert_refused(embedded.host, embedded.port or 0)
        found = running_server(tmp_path)
        assert found is not None and found[0] == embedded.url
        connection = await NatsConnection.connect(found[0], auth=found[1])
        await connection.close()
    assert running_server(tmp_path) is None


async def test_another_kgents_process_finds_the_embedded_server_by_its_data_dir(
    tmp_path: Path,
) -> None:
    async with EmbeddedNats(tmp_path, supervise=False) as embedded:
        connection = await NatsConnection.connect(embedded.url, auth=embedded.auth)
        try:
            await ensure_streams(connection, replicas=1)
        finally:
            await connection.close()
        tool = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "kgents", "nats", "streams", "--data-dir", str(tmp_path)),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "200"},
        )
        async with asyncio.timeout(60):
            output, _ = await tool.communicate()
        assert tool.returncode == 0, output.decode()
        assert b"kgent-events" in output


async def test_a_process_uses_the_server_its_data_dirs_owner_runs(tmp_path: Path) -> None:
    async with EmbeddedNats(tmp_path) as owner:
        settings = Settings(data_dir=tmp_path)
        async with open_streaming(settings) as streaming:
            assert streaming.embedded is None
            assert streaming.connection.connected_url == owner.url
        await round_trip(settings)
        assert owner.pid is not None and process_alive(owner.pid)


async def test_the_data_dir_holds_its_data_and_secrets_privately(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    (data_dir / "kgents.db").touch(mode=0o644)  # as left by an earlier version
    data_dir.chmod(0o755)
    (data_dir / "kgents.db").chmod(0o644)
    settings = Settings(data_dir=data_dir, demo_token_delay_ms=0)
    load_or_create_admin_token(settings)
    async with open_platform(settings), open_streaming(settings) as streaming:
        assert streaming.embedded is not None
        assert mode(data_dir) == 0o700
        assert mode(data_dir / "jetstream") == 0o700
        for name in ("kgents.db", "admin-token", "nats-token", "nats.conf", "nats.json"):
            assert mode(data_dir / name) == 0o600, name
        token = (data_dir / "nats-token").read_text().strip()
        assert token in (data_dir / "nats.conf").read_text()
        assert token not in (data_dir / "nats-server.log").read_text()
        files = [path for path in data_dir.iterdir() if path.is_file()]
        assert {path.name: mode(path) for path in files} == {path.name: 0o600 for path in files}


async def test_kgents_works_against_a_server_with_a_user_and_password(tmp_path: Path) -> None:
    config = f'authorization {{\n  user: "kgents"\n  password: "{PASSWORD}"\n}}\n'
    with nats_server(tmp_path / "nats", config=config) as server:
        await assert_refused("127.0.0.1", server.port)
        url = f"nats://kgents:{PASSWORD_IN_URL}@127.0.0.1:{server.port}"
        await round_trip(Settings(data_dir=tmp_path / "data", nats_url=url))
        connection = await NatsConnection.connect(url)
        try:
            assert connection.connected_url == server.url  # no password in what is reported
        finally:
            await connection.close()
        wrong = f"nats://kgents:nope@127.0.0.1:{server.port}"
        with pytest.raises(EventsUnavailable, match="Authorization") as refused:
            await NatsConnection.connect(wrong, connect_timeout=1.0)
        assert "nope" not in str(refused.value)


async def test_kgents_works_against_a_server_with_a_token(tmp_path: Path) -> None:
    with nats_server(tmp_path / "nats", config='authorization { token: "s3cret" }\n') as server:
        await assert_refused("127.0.0.1", server.port)
        url = f"nats://s3cret@127.0.0.1:{server.port}"
        await round_trip(Settings(data_dir=tmp_path / "data", nats_url=url))


async def test_kgents_works_against_a_server_with_tls_and_client_certificates(
    tmp_path: Path,
) -> None:
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    client_cert = ca.issue_cert("kgents-client")
    paths = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key", "ccert", "ckey")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server_cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server_cert.private_key_pem.write_to_path(str(paths["key"]))
    client_cert.cert_chain_pems[0].write_to_path(str(paths["ccert"]))
    client_cert.private_key_pem.write_to_path(str(paths["ckey"]))
    config = (
        f'tls {{\n  cert_file: "{paths["cert"]}"\n  key_file: "{paths["key"]}"\n'
        f'  ca_file: "{paths["ca"]}"\n  verify: true\n}}\n'
    )
    with nats_server(tmp_path / "nats", config=config) as server:
        await assert_refused("127.0.0.1", server.port)
        settings = Settings(
            data_dir=tmp_path / "data",
            nats_url=server.url,
            nats_tls_ca=paths["ca"],
            nats_tls_cert=paths["ccert"],
            nats_tls_key=paths["ckey"],
        )
        await round_trip(settings)
        without_client_cert = settings.model_copy(update={"nats_tls_cert": None})
        with pytest.raises(InvalidInput, match="go together"):
            await round_trip(without_client_cert)


def test_credentials_leave_the_urls() -> None:
    urls, auth = split_credentials(
        ["nats://u:p%40@a:4222", "nats://u:p%40@b:4222", "nats://c:4222"], NO_AUTH
    )
    assert urls == ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
    assert (auth.user, auth.password, auth.token) == ("u", "p@", None)
    assert "p@" not in repr(auth)
    with pytest.raises(InvalidInput):
        split_credentials(["nats://u:p@a:4222", "nats://v:q@b:4222"], NO_AUTH)


async def test_kgents_works_against_a_server_with_jwt_auth_and_a_creds_file(
    tmp_path: Path,
) -> None:
    setup = operator_setup()
    creds = tmp_path / "kgents.creds"
    creds.write_text(setup.user_creds)
    with nats_server(tmp_path / "nats", config=setup.server_config) as server:
        await assert_refused("127.0.0.1", server.port)
        settings = Settings(data_dir=tmp_path / "data", nats_url=server.url, nats_creds=creds)
        await round_trip(settings)
        with pytest.raises(InvalidInput, match="KGENTS_NATS_CREDS"):
            await round_trip(settings.model_copy(update={"nats_creds": tmp_path / "missing"}))
