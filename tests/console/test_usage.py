"""Usage in the browser: quota bar, rate-limit headroom and meter charts that follow a reply."""

import time

from playwright.sync_api import Page, expect

from tests.console.conftest import (
    Console,
    create_session,
    screenshot,
    send,
    sign_in,
)
from tests.support.demo import message_with_reply

METERING_SECONDS = 20.0


def chart_total(page: Page, chart: str) -> float:
    return float(page.locator(f"#chart-{chart}").get_attribute("data-total") or 0)


def test_usage_follows_a_reply(page: Page, console: Console) -> None:
    _, key = console.tenant_key("usageco", plan="free")
    sign_in(page, console, key)
    page.get_by_role("link", name="Usage").click()
    quota = page.locator("#quota-text")
    expect(quota).to_contain_text("0 of 10,000 tokens used")
    expect(page.locator("#rate-text")).to_contain_text("of 60 requests left this minute")
    expect(page.locator("#chart-tokens figcaption")).to_have_text("Tokens per day, last 14 days")
    expect(page.locator("#chart-tokens svg[role=img]")).to_be_visible()
    assert chart_total(page, "tokens") == 0
    screenshot(page, "10-usage-before")

    # The free plan stops at 'whisper': the picker offers what it allows, whisper chosen.
    page.get_by_role("link", name="Chat").click()
    create_session(page, "Counting")
    budget = page.locator("#msg-budget")
    expect(budget).to_have_value("whisper")
    assert budget.locator("option").all_inner_texts() == [
        "dormant (no model call)",
        "whisper (100 tokens)",
    ]
    send(page, message_with_reply("Is this billed?", words=range(40, 46)))
    reply = page.locator("article.msg-assistant").last
    expect(reply).to_have_attribute("data-complete", "true", timeout=20_000)
    expect(page.locator("#chat-error")).to_be_empty()

    page.get_by_role("link", name="Usage").click()
    expect(quota).not_to_have_attribute("data-used", "0", timeout=10_000)
    used = int(quota.get_attribute("data-used") or 0)
    assert used > 0
    # Meters follow through the outbox, JetStream and the metering processor; the quota is
    # read from the turns, so the chart catches up with it.
    deadline = time.monotonic() + METERING_SECONDS
    while chart_total(page, "tokens") != used and time.monotonic() < deadline:
        page.get_by_role("button", name="Refresh").click()
        page.wait_for_timeout(500)
    assert chart_total(page, "tokens") == used
    assert chart_total(page, "sessions") == 1
    assert chart_total(page, "requests") > 0
    expect(page.locator("#chart-tokens .bar.series-1")).not_to_have_count(0)
    expect(page.locator("#chart-tokens .chart-summary")).to_contain_text("tokens out")
    screenshot(page, "11-usage-after")
