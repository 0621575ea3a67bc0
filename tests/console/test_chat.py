"""Chat in the browser: sign in, sessions, a reply streamed token by token, resume, cancel."""

import re

from playwright.sync_api import Page, Request, expect

from tests.console.conftest import (
    Console,
    create_session,
    record_reply_text,
    recorded_reply_text,
    screenshot,
    send,
    sign_in,
)
from tests.support.demo import message_with_reply

LAST_REPLY = "article.msg-assistant >> nth=-1"


def assert_progressive(snapshots: list[str], final: str, *, steps: int) -> None:
    """Every text shown on the way was a prefix of the final one (no gap, no repeat), and
    the reply grew in at least ``steps`` steps (token by token, not all at once)."""
    assert snapshots, "the reply never showed"
    for shown in snapshots:
        assert final.startswith(shown), f"shown {shown!r} is not a prefix of {final!r}"
    assert len({len(shown) for shown in snapshots if shown}) >= steps


def test_sign_in_create_session_and_stream_a_reply(page: Page, console: Console) -> None:
    _, key = console.tenant_key("streamco")
    page.goto(console.url + "/")
    page.get_by_label("API key", exact=True).fill("kg_live_" + "x" * 32)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#signin-error")).to_contain_text("invalid API key")
    screenshot(page, "01-sign-in-refused")

    sign_in(page, console, key)
    session_id = create_session(page, "Planning")
    record_reply_text(page)
    send(page, message_with_reply("How should I plan my week?", words=range(60, 70)))
    reply = page.locator(LAST_REPLY)
    expect(reply).to_have_attribute("aria-busy", "true")
    expect(page.locator("#stream-status")).to_contain_text("replying")
    page.wait_for_function("() => (window.__snapshots.at(-1) || '').split(' ').length >= 25")
    screenshot(page, "02-chat-streaming")
    expect(reply).to_have_attribute("data-complete", "true", timeout=20_000)
    screenshot(page, "03-chat-complete")

    final = reply.locator(".msg-text").inner_text()
    assert_progressive(recorded_reply_text(page), final, steps=40)
    assert reply.get_attribute("data-repaired") is None
    stored = console.messages(key, session_id)
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[1]["content"] == final
    expect(reply.locator(".msg-meta")).to_contain_text("kgent-demo-1")

    # The key lives in sessionStorage only: never in a URL, a cookie or localStorage.
    storage = page.evaluate("() => [JSON.stringify(sessionStorage), JSON.stringify(localStorage)]")
    assert key in storage[0] and key not in storage[1]
    assert page.context.cookies() == []
    assert key not in page.url


def test_dropped_connection_resumes_without_gap_or_repeat(page: Page, console: Console) -> None:
    _, key = console.tenant_key("dropco")
    resumed: list[Request] = []
    page.on(
        "request",
        lambda request: resumed.append(request) if request.url.endswith("/events") else None,
    )
    sign_in(page, console, key)
    session_id = create_session(page, "Flaky network")
    record_reply_text(page)
    send(page, message_with_reply("What should I drop first?", words=range(85, 95)))
    page.wait_for_function("() => (window.__snapshots.at(-1) || '').split(' ').length >= 12")

    assert console.proxy.cut(refuse_seconds=1.5) >= 1
    status = page.locator("#stream-status")
    expect(status).to_contain_text("reconnecting…", timeout=5_000)
    expect(page.locator(LAST_REPLY)).to_have_class("msg msg-assistant streaming reconnecting")
    screenshot(page, "04-chat-reconnecting")

    reply = page.locator(LAST_REPLY)
    expect(reply).to_have_attribute("data-complete", "true", timeout=20_000)
    expect(status).to_have_text("")
    screenshot(page, "05-chat-resumed")
    final = reply.locator(".msg-text").inner_text()
    # Before the cut, and live after the replay caught up, the reply grew word by word.
    assert_progressive(recorded_reply_text(page), final, steps=10)
    assert reply.get_attribute("data-repaired") is None
    assert console.messages(key, session_id)[-1]["content"] == final
    # It resumed through /events with the last id it had seen.
    assert resumed, "no resume request"
    last_event_id = resumed[-1].headers.get("last-event-id")
    assert last_event_id is not None and last_event_id.isdigit()


def test_cancel_stops_the_reply(page: Page, console: Console) -> None:
    _, key = console.tenant_key("cancelco")
    sign_in(page, console, key)
    create_session(page, "Too long")
    record_reply_text(page)
    send(page, message_with_reply("Tell me everything", words=range(100, 121)))
    page.wait_for_function("() => (window.__snapshots.at(-1) || '').split(' ').length >= 5")
    cancel = page.get_by_role("button", name="Cancel reply")
    expect(cancel).to_be_enabled()
    cancel.click()
    reply = page.locator(LAST_REPLY)
    expect(reply).to_have_attribute("data-ended", "cancelled", timeout=10_000)
    expect(reply.locator(".msg-meta")).to_contain_text("Cancelled")
    expect(cancel).to_be_disabled()
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    # Reopened, the history still says the reply was cancelled.
    page.reload()
    expect(page.locator(LAST_REPLY)).to_have_attribute("data-ended", "cancelled")
    expect(page.locator(LAST_REPLY).locator(".msg-meta")).to_contain_text("Cancelled")


def test_sessions_open_and_delete(page: Page, console: Console) -> None:
    _, key = console.tenant_key("listco")
    sign_in(page, console, key)
    first = create_session(page, "First thoughts")
    page.locator("#msg-budget").select_option("dormant")
    send(page, "A quick one")
    expect(page.locator(LAST_REPLY)).to_have_attribute("data-complete", "true")
    create_session(page, "Second thoughts", mode="challenge")
    sessions = page.get_by_role("list", name="Your sessions")
    expect(sessions.get_by_role("listitem")).to_have_count(2)

    sessions.get_by_role("link", name="First thoughts").click()
    page.get_by_role("heading", name="First thoughts", level=2).wait_for()
    assert page.url.endswith(first)
    expect(page.locator("article.msg")).to_have_count(2)
    expect(page.locator("#msg-mode")).to_have_value("reflect")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete session Second thoughts").click()
    expect(sessions.get_by_role("listitem")).to_have_count(1)
    screenshot(page, "06-sessions")


def test_budget_picker_offers_the_plans_budgets_and_remembers_the_choice(
    page: Page, console: Console
) -> None:
    _, key = console.tenant_key("budgetco", plan="enterprise")
    sign_in(page, console, key)
    budget = page.locator("#msg-budget")
    expect(budget).to_have_value("dialogue")  # the highest up to dialogue, though deep is allowed
    assert budget.locator("option").evaluate_all("options => options.map(o => o.value)") == [
        "dormant",
        "whisper",
        "dialogue",
        "deep",
    ]
    budget.select_option("deep")
    page.reload()
    page.get_by_role("heading", name="Sessions").wait_for()
    expect(budget).to_have_value("deep")


def test_chat_on_a_narrow_screen(narrow_page: Page, console: Console) -> None:
    page = narrow_page
    _, key = console.tenant_key("narrowco")
    sign_in(page, console, key)
    create_session(page, "On the phone")
    page.locator("#msg-budget").select_option("whisper")
    send(page, message_with_reply("Short and sweet?", words=range(40, 46)))
    expect(page.locator(LAST_REPLY)).to_have_attribute("data-complete", "true", timeout=20_000)
    # A session with the long default title, and a word too long for any line.
    page.get_by_role("button", name="New session").click()
    page.get_by_role("heading", name=re.compile("Untitled session"), level=2).wait_for()
    send(page, "https://example.com/" + "a-very-long-path-segment-" * 8)
    expect(page.locator(LAST_REPLY)).to_have_attribute("data-complete", "true", timeout=20_000)
    assert_fits_the_viewport(page)
    deletes = page.get_by_role("button", name=re.compile("^Delete session"))
    for i in range(deletes.count()):
        box = deletes.nth(i).bounding_box()
        assert box is not None and box["x"] + box["width"] <= 390, box
    screenshot(page, "07-chat-narrow")
    for view in ("Usage", "Chat"):
        page.get_by_role("link", name=view).click()
        assert_fits_the_viewport(page)


def assert_fits_the_viewport(page: Page) -> None:
    """No horizontal scroll: the page and every element end within the viewport's width."""
    width = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"horizontal overflow on a narrow screen: {width}"
    wider = page.evaluate(
        """() => [...document.querySelectorAll("body *")]
            .filter((e) => e.offsetParent !== null)
            .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 0.5)
            .map((e) => `${e.tagName}#${e.id}.${e.className}`)"""
    )
    assert wider == [], wider
