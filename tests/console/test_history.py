"""The history in the browser says how each turn ended: complete, cancelled, failed (with or
without text), against a server whose provider is the fake OpenAI upstream."""

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.conftest import make_settings
from tests.console.conftest import ADMIN_HEADERS, sign_in
from tests.fakes import FakeOpenAI, FakeReply
from tests.support.servers import server_in_thread


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        fake.reply = FakeReply(tokens=("All", " went", " well."))
        yield fake


@pytest.fixture
def server_url(tmp_path: Path, nats_url: str, upstream: FakeOpenAI) -> Iterator[str]:
    settings = make_settings(
        tmp_path / "data",
        f"sqlite:///{tmp_path / 'kgents.db'}",
        nats_url,
        llm_provider="openai",
        openai_base_url=upstream.base_url,
        openai_api_key="sk-test",
        llm_model="gpt-test",
        llm_timeout_seconds=2,
    )
    with server_in_thread(settings) as url:
        yield url


def test_reopened_history_says_how_each_turn_ended(
    page: Page, server_url: str, upstream: FakeOpenAI
) -> None:
    with httpx.Client(base_url=server_url, timeout=10) as client:
        tenant = client.post("/v1/tenants", json={"name": "histco"}, headers=ADMIN_HEADERS)
        key = client.post(
            f"/v1/tenants/{tenant.json()['id']}/keys", json={}, headers=ADMIN_HEADERS
        ).json()["key"]
        headers = {"X-API-Key": key}
        session_id = client.post("/v1/kgent/sessions", json={}, headers=headers).json()["id"]
        upstream.queue(
            FakeReply(status=503),
            FakeReply(tokens=("one", " two", " three"), failure="drop", fail_after=2),
        )
        for message in ("refused upstream", "cut upstream", "fine"):
            client.post(
                f"/v1/kgent/sessions/{session_id}/messages",
                json={"message": message, "stream": False},
                headers=headers,
            )

    sign_in(page, server_url, key)
    page.goto(f"{server_url}/#/chat/{session_id}")
    replies = page.locator("article.msg-assistant")
    expect(replies).to_have_count(3)
    expect(page.locator("article.msg-user")).to_have_count(3)
    # A turn that failed before any text: a reply that says so, in its place.
    expect(replies.nth(0)).to_have_attribute("data-ended", "provider_unavailable")
    expect(replies.nth(0)).to_contain_text("(no reply)")
    expect(replies.nth(0).locator(".msg-meta")).to_contain_text("The reply failed")
    # Cut mid-reply: the text so far, and why it stops there.
    expect(replies.nth(1).locator(".msg-text")).to_have_text("one two")
    expect(replies.nth(1)).to_have_attribute("data-ended", re.compile(r"^provider_"))
    expect(replies.nth(2).locator(".msg-text")).to_have_text("All went well.")
    expect(replies.nth(2).locator(".msg-meta")).to_contain_text("gpt-test")
    assert replies.nth(2).get_attribute("data-ended") is None
