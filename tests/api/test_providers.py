"""The real providers through the whole API, against fake OpenAI/Anthropic servers."""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from kgents.api.app import create_app
from kgents.llm.base import estimate_tokens
from tests.conftest import Api, make_settings
from tests.fakes import FakeAnthropic, FakeOpenAI, FakeReply
from tests.support.sse import read_events

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
def fake_anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


async def api_with(settings_overrides: dict[str, object], tmp_path: Path, nats_url: str):  # type: ignore[no-untyped-def]
    settings = make_settings(
        tmp_path / "data", f"sqlite:///{tmp_path / 'kgents.db'}", nats_url, **settings_overrides
    )
    return create_app(settings), settings


@pytest.fixture
async def openai_api(fake_openai: FakeOpenAI, tmp_path: Path, nats_url: str) -> AsyncIterator[Api]:
    import httpx

    fake_openai.reply = FakeReply(tokens=("Hello", " from", " upstream"), input_tokens=42)
    app, settings = await api_with(
        {
            "llm_provider": "openai",
            "openai_base_url": fake_openai.base_url,
            "openai_api_key": "sk-test",
            "llm_model": "gpt-test",
            "llm_timeout_seconds": 2,
        },
        tmp_path,
        nats_url,
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kgents.test") as client:
            yield Api(app=app, client=client, settings=settings)


async def send(api: Api, key: str, **body: object):  # type: ignore[no-untyped-def]
    session = await api.client.post("/v1/kgent/sessions", json={}, headers={"X-API-Key": key})
    sid = session.json()["id"]
    response = await api.client.post(
        f"/v1/kgent/sessions/{sid}/messages",
        json={"message": "hi", "stream": False, **body},
        headers={"X-API-Key": key},
    )
    return sid, response


async def turn_rows(api: Api) -> list[tuple[str, str | None, int, int]]:
    async with api.app.state.platform.engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT status, error_code, tokens_in, tokens_out FROM turns")
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


async def test_openai_reply_and_usage_come_from_the_provider(
    openai_api: Api, fake_openai: FakeOpenAI
) -> None:
    _, key = await openai_api.tenant_with_key()
    _, response = await send(openai_api, key, mode="challenge")
    assert response.status_code == 201, response.text
    reply = response.json()
    assert reply["content"] == "Hello from upstream"
    assert (reply["tokens_in"], reply["tokens_out"], reply["model"]) == (42, 3, "gpt-test")
    sent = fake_openai.stream_requests[-1].json
    assert sent["temperature"] == 0.6 and sent["stream_options"] == {"include_usage": True}
    assert sent["messages"][0]["role"] == "system"
    assert "K-gent" in sent["messages"][0]["content"]
    assert sent["messages"][-1] == {"role": "user", "content": "hi"}


@pytest.mark.parametrize(
    ("reply", "status", "code"),
    [
        (FakeReply(status=401), 502, "provider_auth_failed"),
        (FakeReply(status=400), 502, "provider_bad_request"),
        (FakeReply(status=429), 503, "provider_rate_limited"),
        (FakeReply(status=503), 503, "provider_unavailable"),
        (FakeReply(failure="hang"), 503, "provider_timeout"),
    ],
)
async def test_provider_failures_become_clean_errors(
    openai_api: Api, fake_openai: FakeOpenAI, reply: FakeReply, status: int, code: str
) -> None:
    _, key = await openai_api.tenant_with_key()
    fake_openai.queue(reply)
    sid, response = await send(openai_api, key)
    assert response.status_code == status, response.text
    assert response.json() == {
        "error": {"code": code, "message": response.json()["error"]["message"]}
    }
    assert "sk-test" not in response.text
    # The turn is stored as failed, nothing was billed, and the session works again.
    assert await turn_rows(openai_api) == [("failed", code, 0, 0)]
    messages = await openai_api.client.get(
        f"/v1/kgent/sessions/{sid}/messages", headers={"X-API-Key": key}
    )
    # No reply: the user message says how its turn ended.
    [user] = messages.json()["messages"]
    assert user["role"] == "user" and (user["status"], user["error_code"]) == ("failed", code)
    again = await openai_api.client.post(
        f"/v1/kgent/sessions/{sid}/messages",
        json={"message": "again", "stream": False},
        headers={"X-API-Key": key},
    )
    assert again.status_code == 201


async def test_failure_mid_stream_bills_what_was_generated(
    openai_api: Api, fake_openai: FakeOpenAI
) -> None:
    _, key = await openai_api.tenant_with_key()
    fake_openai.queue(
        FakeReply(tokens=("one", " two", " three", " four"), failure="drop", fail_after=2)
    )
    sid, response = await send(openai_api, key)
    assert response.status_code in (502, 503)
    [(status, _, tokens_in, tokens_out)] = await turn_rows(openai_api)
    assert status == "failed" and tokens_out == estimate_tokens("one two") and tokens_in > 0
    messages = await openai_api.client.get(
        f"/v1/kgent/sessions/{sid}/messages", headers={"X-API-Key": key}
    )
    reply = messages.json()["messages"][-1]
    assert reply["content"] == "one two" and reply["status"] == "failed"
    assert reply["error_code"] is not None and reply["error_code"].startswith("provider_")


async def test_connection_refused_is_503(
    tmp_path: Path, nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An unreachable base URL is a warning at start-up, and /health says why it is down."""
    import httpx

    from tests.support.servers import free_port

    app, settings = await api_with(
        {
            "llm_provider": "openai",
            "openai_base_url": f"http://127.0.0.1:{free_port()}/v1",
            "openai_api_key": "sk-test",
        },
        tmp_path,
        nats_url,
    )
    async with app.router.lifespan_context(app):
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert "the openai provider cannot answer yet: could not connect to openai" in warnings
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://kgents.test"
        ) as client:
            api = Api(app=app, client=client, settings=settings)
            _, key = await api.tenant_with_key()
            _, response = await send(api, key)
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "provider_unreachable"
            health = await client.get("/health")
            assert health.status_code == 503 and health.json()["components"]["llm"] == "down"
            assert health.json()["reasons"] == {"llm": "could not connect to openai"}
            # A provider outage is reported but never takes the replica out of rotation.
            ready = await client.get("/health/ready")
            assert ready.status_code == 200, ready.text
            assert ready.json()["components"] == {"database": "ok", "llm": "down", "nats": "ok"}
            assert (await client.get("/health/live")).status_code == 200


async def test_anthropic_through_the_api(
    fake_anthropic: FakeAnthropic, tmp_path: Path, nats_url: str
) -> None:
    import httpx

    fake_anthropic.reply = FakeReply(tokens=("Bonjour", "!"), input_tokens=17)
    app, settings = await api_with(
        {
            "llm_provider": "anthropic",
            "anthropic_base_url": fake_anthropic.base_url,
            "anthropic_api_key": "sk-ant-test",
            "llm_model": "claude-test",
        },
        tmp_path,
        nats_url,
    )
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://kgents.test"
        ) as client:
            api = Api(app=app, client=client, settings=settings)
            _, key = await api.tenant_with_key()
            _, response = await send(api, key)
            assert response.status_code == 201, response.text
            assert response.json()["content"] == "Bonjour!"
            assert response.json()["tokens_in"] == 17 and response.json()["tokens_out"] == 2


async def test_a_bursting_upstream_arrives_whole_and_in_order(
    openai_api: Api, fake_openai: FakeOpenAI
) -> None:
    """2,000 tokens sent at once: tokens that arrive while a chunk awaits its ack go out
    together in the next chunk event, so the events may be fewer than the tokens; the text and
    the token count arrive whole and in order, each chunk's ``index`` is the number of tokens
    before it, and the stored reply equals the streamed text."""
    tokens = tuple(f" w{i}" for i in range(2000))
    fake_openai.queue(FakeReply(tokens=tokens))
    _, key = await openai_api.tenant_with_key()
    headers = {"X-API-Key": key}
    sid = (await openai_api.client.post("/v1/kgent/sessions", json={}, headers=headers)).json()[
        "id"
    ]
    async with openai_api.client.stream(
        "POST",
        f"/v1/kgent/sessions/{sid}/messages",
        json={"message": "burst", "stream": True},
        headers=headers,
    ) as response:
        assert response.status_code == 200
        events = [event async for event in read_events(response)]

    assert [e.event for e in events][0] == "user_message"
    assert events[-1].event == "complete"
    chunks = [e.data for e in events if e.event == "chunk"]
    tokens_before = 0
    for chunk in chunks:
        assert chunk["index"] == tokens_before
        tokens_before += chunk["text"].count(" w")
    assert tokens_before == 2000
    text = "".join(chunk["text"] for chunk in chunks)
    assert text == "".join(tokens)
    ids = [e.id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    complete = events[-1].data
    assert (complete["text"], complete["tokens_out"], complete["chunks"]) == (
        text,
        2000,
        len(chunks),
    )
    messages = await openai_api.client.get(f"/v1/kgent/sessions/{sid}/messages", headers=headers)
    assert [m["content"] for m in messages.json()["messages"]] == ["burst", text]
