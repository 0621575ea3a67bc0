"""No input is a server error: schemathesis against a live server, as a tenant and as the admin.

Path parameters are pinned to real ids (a session with a finished turn, the tenant, its key, a
meter) so generated requests reach the handlers behind the 404s; every phase runs, the stateful
one included. The only check is ``not_a_server_error``: a 5xx (or a dropped connection) fails.
"""

import asyncio
import os
import sys
from pathlib import Path

import httpx
import pytest

from kgents.config import DEFAULT_PLANS, Settings
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.support.servers import server_in_thread

pytestmark = pytest.mark.anyio

SECONDS_PER_RUN = float(os.environ.get("KGENTS_FUZZ_SECONDS", "10"))
"""The time budget of each run (tenant, then admin), per database."""


@pytest.fixture
def settings(tmp_path: Path, database_url: str, nats_url: str) -> Settings:
    return make_settings(tmp_path / "data", database_url, nats_url, plans=dict(DEFAULT_PLANS))


def config(tmp_path: Path, *, name: str, header: str, ids: dict[str, str], deletable: str) -> Path:
    """A schemathesis config file: the caller's credentials and the pinned path ids (the
    session that may be deleted is another one, so the others stay reachable)."""
    pinned = "\n".join(f'"path.{param}" = "{value}"' for param, value in ids.items())
    path = tmp_path / f"schemathesis-{name}.toml"
    path.write_text(
        f"""
seed = 1
workers = 1
request-timeout = 1.0
max-stream-events = 2
max-time = {SECONDS_PER_RUN}
suppress-health-check = ["all"]

[headers]
{header}

[parameters]
{pinned}

[checks]
enabled = false

[checks.not_a_server_error]
enabled = true

[generation]
max-examples = 30

[[operations]]
include-name = "DELETE /v1/kgent/sessions/{{session_id}}"
parameters = {{ "path.session_id" = "{deletable}" }}
"""
    )
    return path


async def fuzz(base_url: str, config_file: Path) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config_file),
        "run",
        f"{base_url}/openapi.json",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"},
        cwd=config_file.parent,  # its cache directory goes there, not into the repository
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=SECONDS_PER_RUN * 4 + 60)
    return process.returncode or 0, output.decode(errors="replace")


@pytest.mark.timeout(SECONDS_PER_RUN * 2 + 180)
async def test_no_input_is_a_server_error(settings: Settings, tmp_path: Path) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with server_in_thread(settings) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            tenant = await client.post(
                "/v1/tenants", json={"name": "fuzz", "plan": "custom"}, headers=admin
            )
            tenant_id = tenant.json()["id"]
            created = await client.post(f"/v1/tenants/{tenant_id}/keys", json={}, headers=admin)
            key, key_id = created.json()["key"], created.json()["id"]
            tenant_key = {"X-API-Key": key}
            session_id = (
                await client.post("/v1/kgent/sessions", json={}, headers=tenant_key)
            ).json()["id"]
            deletable = (
                await client.post("/v1/kgent/sessions", json={}, headers=tenant_key)
            ).json()["id"]
            turn = await client.post(
                f"/v1/kgent/sessions/{session_id}/messages",
                json={"message": "hello", "stream": False},
                headers=tenant_key,
            )
            assert turn.status_code == 201, turn.text
        ids = {
            "session_id": session_id,
            "tenant_id": tenant_id,
            "key_id": key_id,
            "meterIdOrSlug": "llm_tokens_out",
        }
        runs = [
            ("tenant", f'X-API-Key = "{key}"'),  # first: the admin run may revoke the key
            ("admin", f'Authorization = "Bearer {ADMIN_TOKEN}"'),
        ]
        for name, header in runs:
            code, output = await fuzz(
                base_url, config(tmp_path, name=name, header=header, ids=ids, deletable=deletable)
            )
            assert code == 0, f"{name} run:\n{output[-12000:]}"
