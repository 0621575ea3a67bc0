"""Resume where people are: a reload mid-reply, and a second tab, show the reply catching up
and then streaming live to its end, with a cancel button that works from either tab."""

import pytest
from playwright.sync_api import Browser, Page, expect

from kgents.config import Settings
from tests.conftest import make_settings
from tests.console.conftest import (
    WIDE,
    Console,
    browser_page,
    create_session,
    record_reply_text,
    recorded_reply_text,
    send,
    sign_in,
)
from tests.support.demo import message_with_reply

LAST_REPLY = "article.msg-assistant >> nth=-1"
TOKEN_DELAY_MS = 80  # a long reply lasts ~10 s: time to reload or open a tab mid-reply


@pytest.fixture(scope="module")
def console_settings(tmp_path_factory: pytest.TempPathFactory, nats_url: str) -> Settings:
    """This module's server: the console's, with slower replies."""
    base = tmp_path_factory.mktemp("console-resume")
    return make_settings(
        base / "data",
        f"sqlite:///{base / 'kgents.db'}",
        nats_url,
        demo_token_delay_ms=TOKEN_DELAY_MS,
    )


def words_shown(page: Page, at_least: int) -> None:
    page.wait_for_function(
        f"() => (window.__snapshots.at(-1) || '').split(' ').length >= {at_least}"
    )


def test_reload_mid_reply_catches_up_then_streams_live(page: Page, console: Console) -> None:
    _, key = console.tenant_key("reloadco")
    sign_in(page, console, key)
    session_id = create_session(page, "Reloaded")
    record_reply_text(page)
    message = message_with_reply("Walk me through it slowly", words=range(110, 121))
    send(page, message)
    words_shown(page, 10)

    page.reload()
    reply = page.locator(LAST_REPLY)
    expect(reply).to_have_attribute("aria-busy", "true")  # the running reply, not only the question
    record_reply_text(page)
    expect(page.locator("article.msg-user").last).to_have_text("You" + message)
    expect(page.get_by_role("button", name="Cancel reply")).to_be_enabled()
    expect(page.get_by_role("button", name="Send")).to_be_disabled()
    expect(page.locator("#stream-status")).to_contain_text("replying")
    expect(reply).to_have_attribute("data-complete", "true", timeout=20_000)
    final = reply.locator(".msg-text").inner_text()
    assert final == console.messages(key, session_id)[-1]["content"]
    # Caught up with what was said before the reload, then grew word by word, live.
    shown = [text for text in recorded_reply_text(page) if text]
    assert all(final.startswith(text) for text in shown)
    assert len({len(text) for text in shown}) >= 20, shown
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    expect(page.get_by_role("button", name="Cancel reply")).to_be_disabled()


def test_a_second_tab_follows_the_reply_and_can_cancel_it(
    browser: Browser, page: Page, console: Console
) -> None:
    _, key = console.tenant_key("tabsco")
    sign_in(page, console, key)
    session_id = create_session(page, "Two tabs")
    with browser_page(browser, WIDE) as watcher:
        # Open before the turn starts: the new message and its reply appear as they stream.
        sign_in(watcher, console, key)
        watcher.goto(f"{console.url}/#/chat/{session_id}")
        watcher.get_by_role("heading", name="Two tabs", level=2).wait_for()
        record_reply_text(watcher)
        send(page, message_with_reply("First, from the other tab", words=range(40, 50)))
        expect(watcher.locator("article.msg-user")).to_have_count(1)
        expect(watcher.locator(LAST_REPLY)).to_have_attribute("data-complete", "true")
        expect(page.locator(LAST_REPLY)).to_have_attribute("data-complete", "true")
        followed = watcher.locator(LAST_REPLY).locator(".msg-text").inner_text()
        assert followed == page.locator(LAST_REPLY).locator(".msg-text").inner_text()
        assert len({len(text) for text in recorded_reply_text(watcher)}) >= 10

        # Opened in a third tab mid-reply: it catches up; cancel there stops it everywhere.
        with browser_page(browser, WIDE) as late:
            sign_in(late, console, key)
            record_reply_text(page)
            send(page, message_with_reply("Second, a long one", words=range(110, 121)))
            words_shown(page, 8)
            late.goto(f"{console.url}/#/chat/{session_id}")
            expect(late.locator(LAST_REPLY)).to_have_attribute("aria-busy", "true")
            expect(late.locator("article.msg-assistant")).to_have_count(2)
            record_reply_text(late)
            words_shown(late, 20)
            late.get_by_role("button", name="Cancel reply").click()
            for tab in (page, watcher, late):
                expect(tab.locator(LAST_REPLY)).to_have_attribute("data-ended", "cancelled")
                expect(tab.get_by_role("button", name="Send")).to_be_enabled()
            texts = {
                tab.locator(LAST_REPLY).locator(".msg-text").inner_text()
                for tab in (page, watcher, late)
            }
            assert texts == {console.messages(key, session_id)[-1]["content"]}
