"""Structured logs: fields, request context, ``X-Request-ID``, and no secrets or message text."""

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kgents.observability.logging import (
    JsonFormatter,
    RequestContext,
    TextFormatter,
    build_handler,
    configure_logging,
    enter_request,
    leave_request,
    redact,
)
from tests.conftest import ADMIN_TOKEN
from tests.observability.conftest import Live
from tests.support.servers import ServerProcess

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SECRET_MESSAGE = "my very private plan involving zanzibar"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Every log record of the process as JSON lines, through ``configure_logging``."""
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = configure_logging(level="INFO", fmt="json", stream=stream)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line]


def test_requests_are_logged_with_their_context_and_nothing_secret(
    live: Live, captured: io.StringIO
) -> None:
    session_id = live.new_session()
    response = live.client.post(
        f"/v1/kgent/sessions/{session_id}/messages",
        json={"message": SECRET_MESSAGE, "stream": False},
        headers={**live.headers, "X-Request-ID": "client-chose-this-1"},
    )
    assert response.status_code == 201
    assert response.headers["x-request-id"] == "client-chose-this-1"
    with live.client.stream(
        "POST",
        f"/v1/kgent/sessions/{session_id}/messages",
        json={"message": SECRET_MESSAGE},
        headers={"Authorization": f"Bearer {live.key}"},
    ) as streamed:
        streamed.read()
    generated = streamed.headers["x-request-id"]
    assert re.fullmatch(r"req_[A-Za-z0-9]{22}", generated)
    bad = live.client.get("/v1/kgent/sessions", headers={"X-API-Key": live.key + "x"})
    assert bad.status_code == 401
    odd = live.client.get("/health", headers={"X-Request-ID": "spaces are not ok"})
    assert odd.headers["x-request-id"].startswith("req_")

    logged = records(captured)
    access = [r for r in logged if r["logger"] == "kgents.access"]
    by_id = {r["request_id"]: r for r in access}
    first = by_id["client-chose-this-1"]
    assert first["tenant_id"] == live.tenant_id and first["session_id"] == session_id
    assert first["route"] == "/v1/kgent/sessions/{session_id}/messages"
    assert first["status"] == 201 and first["method"] == "POST" and first["level"] == "info"
    assert RFC3339_UTC.match(first["time"])
    assert first["message"] == "POST /v1/kgent/sessions/{session_id}/messages 201"
    assert by_id[generated]["session_id"] == session_id and by_id[generated]["status"] == 200
    unauthenticated = by_id[bad.headers["x-request-id"]]
    assert unauthenticated["status"] == 401 and unauthenticated["tenant_id"] is None
    for record in logged:
        assert {
            "time",
            "level",
            "logger",
            "message",
            "request_id",
            "tenant_id",
            "session_id",
        } <= set(record)

    text = captured.getvalue()
    assert live.key not in text and live.key[:20] not in text
    assert ADMIN_TOKEN not in text
    assert "zanzibar" not in text


def test_records_of_a_request_carry_its_context() -> None:
    stream = io.StringIO()
    handler = build_handler("json", stream)
    logger = logging.getLogger("kgents.test.context")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    scope: dict[str, Any] = {"state": {}, "path_params": {}}
    token = enter_request(RequestContext(request_id="req_1", scope=scope))
    try:
        logger.info("before authentication")
        scope["state"]["tenant_id"] = "ten_1"
        scope["path_params"]["session_id"] = "ses_1"
        logger.info("after routing")
    finally:
        leave_request(token)
        logger.removeHandler(handler)
    logger.info("outside")
    before, after = records(stream)
    assert (before["request_id"], before["tenant_id"], before["session_id"]) == (
        "req_1",
        None,
        None,
    )
    assert (after["tenant_id"], after["session_id"]) == ("ten_1", "ses_1")


def test_secrets_are_masked_in_messages_fields_and_tracebacks() -> None:
    key = "kg_live_" + "A1b2C3d4" * 4
    record = logging.LogRecord(
        "kgents.x", logging.ERROR, __file__, 1, "auth with %s failed", (key,), None
    )
    record.header = f"Bearer {ADMIN_TOKEN}"
    try:
        raise ValueError(f"OPENAI key sk-proj-abcdefghijklmnop and api_key={key}")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    for formatter in (JsonFormatter(), TextFormatter()):
        line = formatter.format(record)
        assert key not in line and ADMIN_TOKEN not in line and "abcdefghijklmnop" not in line
        assert "kg_live_[redacted]" in line
    entry = json.loads(JsonFormatter().format(record))
    assert entry["header"] == "Bearer [redacted]" and "ValueError" in entry["exception"]
    assert redact("x-api-key: kg_admin_zzz token=abc") == "x-api-key: [redacted] token=[redacted]"
    # URLs keep their user and host, never their password or token (nats-py's own messages too).
    assert (
        redact("reconnected to nats://kgents:pa55w0rd@10.0.0.1:4222,tls://tok3n@nats-2:4222")
        == "reconnected to nats://kgents:***@10.0.0.1:4222,tls://***@nats-2:4222"
    )


def test_text_format_for_terminals() -> None:
    record = logging.LogRecord(
        "kgents.access", logging.INFO, __file__, 1, "GET /health 200", (), None
    )
    record.request_id, record.tenant_id, record.session_id = "req_9", None, None
    record.status = 200
    line = TextFormatter().format(record)
    assert re.match(r"^\d{4}-\d\d-\d\dT[\d:.]+Z INFO    kgents.access  GET /health 200", line)
    assert line.endswith("request_id=req_9  status=200")


def test_kgents_serve_logs_json_lines_when_not_on_a_terminal(tmp_path: Path, nats_url: str) -> None:
    env = {
        "KGENTS_DATABASE_URL": f"sqlite:///{tmp_path / 'kgents.db'}",
        "KGENTS_NATS_URL": nats_url,
        "KGENTS_ADMIN_TOKEN": ADMIN_TOKEN,
    }
    with ServerProcess(tmp_path / "data", env) as server:
        response = httpx.get(
            f"{server.base_url}/v1/tenants", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
    lines = server.log_path.read_text().splitlines()
    logged = [json.loads(line) for line in lines if line.startswith("{")]
    assert any(r["logger"] == "uvicorn.error" for r in logged)  # uvicorn's own records too
    access = [r for r in logged if r["logger"] == "kgents.access"]
    assert any(r["request_id"] == request_id and r["route"] == "/v1/tenants" for r in access)
    assert ADMIN_TOKEN not in server.log_path.read_text()
