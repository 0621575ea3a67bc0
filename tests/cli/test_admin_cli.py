"""``kgents tenant|key|db``: the CLI works on the database directly, no server needed."""

import asyncio
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from kgents.cli.main import app
from kgents.streaming.connection import NatsConnection
from kgents.streaming.topology import ensure_streams
from tests.support.servers import free_port, wait_healthy

runner = CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None) -> str:
    result = runner.invoke(app, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_tenant_and_key_commands(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    output = invoke("tenant", "create", "acme", "--plan", "pro", "--data-dir", data)
    tenant_id = re.search(r"tenant_id: (ten_\w+)", output)
    key = re.search(r"api_key:\s+(kg_live_\w{32})", output)
    assert tenant_id and key
    listing = invoke("tenant", "list", "--data-dir", data)
    assert tenant_id.group(1) in listing and "pro" in listing

    output = invoke("key", "create", tenant_id.group(1), "--data-dir", data)
    key_id = re.search(r"key_id:\s+(key_\w+)", output)
    assert key_id and "scopes:  sessions, usage" in output
    output = invoke("key", "create", tenant_id.group(1), "--scope", "usage", "--data-dir", data)
    assert "scopes:  usage\n" in output
    output = invoke("key", "revoke", key_id.group(1), "--data-dir", data)
    assert "revoked" in output


def test_data_dir_from_environment_and_database_url(tmp_path: Path) -> None:
    env = {
        "KGENTS_DATA_DIR": str(tmp_path / "env-data"),
        "KGENTS_DATABASE_URL": f"sqlite:///{tmp_path / 'elsewhere.db'}",
    }
    invoke("tenant", "create", "globex", env=env)
    assert (tmp_path / "elsewhere.db").exists()
    assert "globex" in invoke("tenant", "list", env=env)


def test_errors_are_clean(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    result = runner.invoke(app, ["tenant", "create", "x", "--plan", "gold", "--data-dir", data])
    assert result.exit_code == 1
    assert "unknown plan" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["key", "revoke", "key_missing", "--data-dir", data])
    assert result.exit_code == 1 and "not found" in result.output
    result = runner.invoke(app, ["key", "create", "ten_missing", "--data-dir", data])
    assert result.exit_code == 1 and "not found" in result.output
    result = runner.invoke(app, ["key", "create", "ten_x", "--scope", "root", "--data-dir", data])
    assert result.exit_code == 1 and "unknown scopes ['root']" in result.output


def test_db_upgrade(tmp_path: Path) -> None:
    output = invoke("db", "upgrade", "--data-dir", str(tmp_path / "data"))
    assert "up to date" in output
    assert (tmp_path / "data" / "kgents.db").exists()


@pytest.mark.slow
def test_serve_first_start_creates_token_and_binds_localhost(tmp_path: Path, nats_url: str) -> None:
    data = tmp_path / "data"
    port = free_port()
    env = {
        "PATH": str(Path(sys.executable).parent),
        "KGENTS_NATS_URL": nats_url,
        "HOME": str(tmp_path),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),  # a worktree's src first, when set
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "kgents", "serve", "--port", str(port), "--data-dir", str(data)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}")
        token_file = data / "admin-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        response = httpx.get(
            f"http://127.0.0.1:{port}/v1/tenants", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 200
        assert (data / "kgents.db").exists()
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    text = output.decode()
    # Never printed in full (the output lands in service logs): where it is and how it starts.
    assert token not in text and token[12:] not in text
    assert token[:12] in text and str(token_file) in text and "Authorization: Bearer" in text
    assert f"http://127.0.0.1:{port}" in text or "127.0.0.1" in text


def test_nats_streams(tmp_path: Path, nats_url: str) -> None:
    async def create_streams() -> None:
        connection = await NatsConnection.connect(nats_url)
        try:
            await ensure_streams(connection, replicas=1)
        finally:
            await connection.close()

    asyncio.run(create_streams())
    env = {"KGENTS_NATS_URL": nats_url, "COLUMNS": "200"}
    output = invoke("nats", "streams", "--data-dir", str(tmp_path), env=env)
    assert "kgent-events" in output and "kgent-usage" in output
    assert "168h" in output and "720h" in output


def test_nats_streams_with_the_embedded_server(tmp_path: Path) -> None:
    output = invoke("nats", "streams", "--data-dir", str(tmp_path / "data"), env={"COLUMNS": "200"})
    assert "kgent-events" in output
    assert not (tmp_path / "data" / "nats.json").exists()  # the temporary server was stopped
