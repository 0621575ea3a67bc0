"""The page itself in the browser: the SSE frame parser, names for every control, keyboard use."""

from typing import Any

from playwright.sync_api import Page, expect

from tests.console.conftest import Console, sign_in

UNNAMED_CONTROLS = """() => [...document.querySelectorAll("input, select, textarea, button, a")]
    .filter((el) => el.getClientRects().length > 0)
    .filter((el) => {
        const labelled = el.getAttribute("aria-labelledby");
        const name = (el.labels && [...el.labels].map((l) => l.textContent).join(" "))
            || el.getAttribute("aria-label")
            || (labelled && document.getElementById(labelled)?.textContent)
            || (["BUTTON", "A"].includes(el.tagName) && el.textContent);
        return !(name || "").trim();
    })
    .map((el) => el.outerHTML.slice(0, 120))"""


def test_sse_parser_reassembles_frames_split_anywhere(page: Page, console: Console) -> None:
    page.goto(console.url + "/")
    frames: list[list[dict[str, Any]]] = page.evaluate(
        """async () => {
            const { SseParser } = await import("/console/sse.js");
            const stream = ": connected\\r\\n\\r\\nid: 7\\r\\nevent: chunk\\r\\n"
                + "data: {\\"text\\":\\"a\\"}\\r\\n\\r\\n: heartbeat\\n\\n"
                + "event: error\\ndata: line one\\ndata: line two\\n\\n"
                + "id: 9\\rdata:no-space\\r\\r";
            const whole = new SseParser().feed(stream);
            // The same text cut into one-character pieces (a "\\r\\n" split in two included).
            const parser = new SseParser();
            const pieces = [...stream].flatMap((char) => parser.feed(char));
            return [whole, pieces];
        }"""
    )
    expected = [
        {"id": 7, "event": "chunk", "data": '{"text":"a"}'},
        {"id": None, "event": "error", "data": "line one\nline two"},
        {"id": 9, "event": "message", "data": "no-space"},
    ]
    assert frames == [expected, expected]


def test_every_control_has_an_accessible_name(page: Page, console: Console) -> None:
    page.goto(console.url + "/")
    assert page.evaluate(UNNAMED_CONTROLS) == []
    _, key = console.tenant_key("a11yco")
    sign_in(page, console, key)
    assert page.evaluate(UNNAMED_CONTROLS) == []
    log = page.get_by_role("log", name="Conversation")
    expect(log).to_have_attribute("aria-live", "polite")
    expect(page.get_by_role("status").first).to_be_attached()
    page.get_by_role("link", name="Usage").click()
    expect(page.locator("#chart-tokens svg[role=img]")).to_be_visible()
    assert page.evaluate(UNNAMED_CONTROLS) == []


def test_keyboard_only(page: Page, console: Console) -> None:
    _, key = console.tenant_key("keyboardco")
    page.goto(console.url + "/")
    skip = page.get_by_role("link", name="Skip to content")
    skip.focus()
    expect(skip).to_be_in_viewport()
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()
    # The key field has the focus on arrival; Enter submits the form.
    page.get_by_label("API key", exact=True).focus()
    page.keyboard.type(key)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Sessions")).to_be_visible()
    page.get_by_label("Title of a new session").focus()
    page.keyboard.type("Typed")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Typed", level=2)).to_be_visible()
    expect(page.get_by_label("Message to K-gent")).to_be_focused()
    page.locator("#msg-budget").select_option("dormant")
    page.get_by_label("Message to K-gent").focus()
    page.keyboard.type("Hello")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("there")
    expect(page.get_by_label("Message to K-gent")).to_have_value("Hello\nthere")
    page.keyboard.press("Enter")
    expect(page.locator("article.msg-user").last).to_have_text("YouHello\nthere")
    expect(page.locator("article.msg-assistant").last).to_have_attribute("data-complete", "true")
