"""``GET /v1/usage`` (a tenant's meters, token quota, rate-limit headroom) and ``kgents usage``."""

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kgents.cli.main import app as cli
from kgents.config import Settings
from kgents.platform import Platform, open_platform
from kgents.records import UsageEvent
from tests.conftest import Api
from tests.openmeter.conftest import SOURCE, T0
from tests.support.waiting import eventually

runner = CliRunner()


def events(subject: str, *specs: tuple[str, dict[str, Any], timedelta]) -> list[UsageEvent]:
    return [
        UsageEvent(
            id=f"u-{subject}-{index}",
            source=SOURCE,
            type=event_type,
            subject=subject,
            time=T0 + offset,
            data=data,
        )
        for index, (event_type, data, offset) in enumerate(specs)
    ]


def tenant_usage(subject: str) -> list[UsageEvent]:
    return events(
        subject,
        ("llm.tokens", {"tokens_in": 10, "tokens_out": 4, "model": "gpt"}, timedelta(minutes=5)),
        ("llm.tokens", {"tokens_in": 3, "tokens_out": 2, "model": "demo"}, timedelta(hours=5)),
        ("llm.tokens", {"tokens_in": 8, "tokens_out": 1, "model": "gpt"}, timedelta(days=1)),
        ("session.create", {"agent_type": "kgent"}, timedelta(minutes=1)),
        ("api.request", {"endpoint": "/x", "method": "GET", "status_code": 200}, timedelta(0)),
    )


def z(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@pytest.mark.anyio
async def test_usage_of_the_calling_tenant(api: Api) -> None:
    tenant_id, key = await api.tenant_with_key(plan="pro", name="acme")
    other_id, _ = await api.tenant_with_key(name="globex")
    platform: Platform = api.app.state.platform
    await platform.meters.ingest([*tenant_usage(tenant_id), *tenant_usage(other_id)])
    params = {"from": z(T0), "to": z(T0 + timedelta(days=2)), "windowSize": "DAY"}

    response = await api.client.get("/v1/usage", params=params, headers={"X-API-Key": key})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["tenant_id"], body["plan"]) == (tenant_id, "pro")
    assert (body["from"], body["to"], body["window_size"]) == (z(T0), params["to"], "DAY")
    assert body["window_time_zone"] == "UTC"
    meters = {meter["slug"]: meter for meter in body["meters"]}
    assert {"api_requests", "llm_tokens_in", "llm_tokens_out", "session_count"} <= set(meters)
    day = z(T0 + timedelta(days=1))

    def table(slug: str) -> list[tuple[Any, ...]]:
        return [
            (row["window_start"], row["group_by"], row["value"]) for row in meters[slug]["data"]
        ]

    assert table("llm_tokens_in") == [
        (z(T0), {"model": "demo"}, 3.0),
        (z(T0), {"model": "gpt"}, 10.0),
        (day, {"model": "gpt"}, 8.0),
    ]
    assert table("llm_tokens_out") == [
        (z(T0), {"model": "demo"}, 2.0),
        (z(T0), {"model": "gpt"}, 4.0),
        (day, {"model": "gpt"}, 1.0),
    ]
    assert table("session_count") == [(z(T0), {}, 1.0)]
    assert table("api_requests") == [(z(T0), {}, 1.0)]  # the other tenant's are not here
    assert meters["llm_tokens_in"]["group_by"] == ["model"]

    quota = body["quota"]
    assert (quota["limit"], quota["used"], quota["remaining"]) == (100_000, 0, 100_000)
    rate = body["rate_limit"]
    assert rate["limit"] == 600 and 0 <= rate["remaining"] < 600
    reset = datetime.fromisoformat(rate["reset"])
    assert datetime.now(UTC) < reset <= datetime.now(UTC) + timedelta(seconds=61)

    monthly = await api.client.get(
        "/v1/usage",
        params={**params, "windowSize": "MONTH", "windowTimeZone": "Europe/Berlin"},
        headers={"Authorization": f"Bearer {key}"},
    )
    tokens_in = next(m for m in monthly.json()["meters"] if m["slug"] == "llm_tokens_in")
    assert [(row["group_by"], row["value"]) for row in tokens_in["data"]] == [
        ({"model": "demo"}, 3.0),
        ({"model": "gpt"}, 18.0),
    ]
    assert tokens_in["data"][0]["window_start"] == "2025-06-30T22:00:00Z"  # July, in Berlin


@pytest.mark.anyio
async def test_quota_and_meters_follow_real_turns(isolated_api: Api) -> None:
    api = isolated_api
    tenant_id, key = await api.tenant_with_key(plan="pro")
    headers = {"X-API-Key": key}
    session = (await api.client.post("/v1/kgent/sessions", json={}, headers=headers)).json()
    reply = await api.client.post(
        f"/v1/kgent/sessions/{session['id']}/messages",
        json={"message": "What should I work on?", "stream": False},
        headers=headers,
    )
    assert reply.status_code == 201
    used = reply.json()["tokens_in"] + reply.json()["tokens_out"]
    assert used > 0

    async def metered() -> bool:  # the llm.tokens event travels outbox -> JetStream -> meters
        body = (await api.client.get("/v1/usage", headers=headers)).json()
        totals = {m["slug"]: sum(row["value"] for row in m["data"]) for m in body["meters"]}
        return totals["llm_tokens_in"] + totals["llm_tokens_out"] == used

    await eventually(metered, seconds=20, every=0.2)
    body = (await api.client.get("/v1/usage", headers=headers)).json()
    assert body["quota"]["used"] == used
    assert body["quota"]["remaining"] == 100_000 - used
    now = datetime.now(UTC)
    assert (
        datetime.fromisoformat(body["quota"]["period_start"])
        == now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        or now.day == 1
    )  # a run straddling midnight of the 1st
    assert datetime.fromisoformat(body["to"]) - datetime.fromisoformat(body["from"]) == timedelta(
        days=30
    )
    assert body["window_size"] == "DAY"
    sessions = next(m for m in body["meters"] if m["slug"] == "session_count")
    assert sum(row["value"] for row in sessions["data"]) == 1
    assert tenant_id == body["tenant_id"]


@pytest.mark.anyio
async def test_usage_errors_use_the_common_error_body(api: Api) -> None:
    _, key = await api.tenant_with_key()
    headers = {"X-API-Key": key}
    response = await api.client.get("/v1/usage")
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
    for params in (
        {"windowSize": "WEEK"},
        {"from": "2026-03-02T00:00:30Z", "to": "2026-03-03T00:00:00Z"},
        {"from": "2026-03-02T00:00:00"},
        {"windowTimeZone": "Nowhere/Special"},
        {"from": "2026-03-03T00:00:00Z", "to": "2026-03-02T00:00:00Z"},
    ):
        response = await api.client.get("/v1/usage", params=params, headers=headers)
        assert response.status_code == 422, (params, response.text)
        assert set(response.json()["error"]) == {"code", "message"}
    tenant_id, _ = await api.tenant_with_key(name="scoped")
    created = await api.client.post(
        f"/v1/tenants/{tenant_id}/keys", json={"scopes": ["sessions"]}, headers=api.admin
    )
    response = await api.client.get("/v1/usage", headers={"X-API-Key": created.json()["key"]})
    assert response.status_code == 403 and response.json()["error"]["code"] == "scope_missing"


def invoke(*args: str) -> str:
    result = runner.invoke(cli, list(args), env={"COLUMNS": "200"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_kgents_usage_prints_a_table(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    created = invoke("tenant", "create", "acme", "--plan", "free", "--data-dir", data)
    match = re.search(r"tenant_id: (ten_\w+)", created)
    assert match
    tenant_id = match.group(1)

    async def seed() -> None:
        async with open_platform(Settings(data_dir=Path(data))) as platform:
            await platform.meters.ingest(tenant_usage(tenant_id))

    asyncio.run(seed())
    window = ["--from", "2025-07-07", "--to", "2025-07-09T00:00:00Z", "--data-dir", data]
    output = invoke("usage", tenant_id, *window)
    assert f"Usage of {tenant_id}" in output and "day windows" in output
    lines = [line for line in output.splitlines() if "llm_tokens_in" in line]
    assert len(lines) == 3
    assert (
        "2025-07-07" in lines[0]
        and "model=demo" in lines[0]
        and lines[0].rstrip(" │").endswith("3")
    )
    assert "2025-07-08" in lines[2] and lines[2].rstrip(" │").endswith("8")
    assert "Tokens this month: used 0 of 10,000, remaining 10,000" in output
    assert "60 requests per minute" in output

    output = invoke("usage", tenant_id, "--window", "month", *window)
    [line] = [line for line in output.splitlines() if "llm_tokens_in" in line and "gpt" in line]
    assert "2025-07" in line and line.rstrip(" │").endswith("18")
    output = invoke("usage", tenant_id, "--window", "hour", "--time-zone", "Asia/Tokyo", *window)
    assert "2025-07-07 14:00" in output  # 05:00 UTC is 14:00 in Tokyo
    assert "No usage in this range." in invoke("usage", tenant_id, "--data-dir", data)

    result = runner.invoke(cli, ["usage", "ten_missing", "--data-dir", data])
    assert result.exit_code == 1 and "not found" in result.output
    result = runner.invoke(cli, ["usage", tenant_id, "--time-zone", "Nowhere", "--data-dir", data])
    assert result.exit_code == 2 and "unknown time zone" in result.output
    result = runner.invoke(cli, ["usage", tenant_id, "--from", "soon", "--data-dir", data])
    assert result.exit_code == 2 and "ISO 8601" in result.output
    result = runner.invoke(
        cli, ["usage", tenant_id, "--from", "2026-03-02T00:00:30Z", "--data-dir", data]
    )
    assert (
        result.exit_code == 1
        and "whole minute" in result.output
        and "Traceback" not in result.output
    )


def test_kgents_serve_refuses_a_bad_meters_file(tmp_path: Path) -> None:
    meters = tmp_path / "meters.yaml"
    meters.write_text("meters:\n  - slug: Bad Slug\n    eventType: x\n    aggregation: COUNT\n")
    env = {"KGENTS_METERS_FILE": str(meters), "COLUMNS": "200"}
    result = runner.invoke(cli, ["serve", "--data-dir", str(tmp_path / "data")], env=env)
    assert result.exit_code == 1
    assert "meters file" in result.output and "Traceback" not in result.output
