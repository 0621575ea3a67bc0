"""``/docs`` in Chromium with every request to another host blocked: its assets come from
this server, and Swagger UI renders the OpenAPI 3.1 document."""

from urllib.parse import urlsplit

from playwright.sync_api import Page, Route, expect

from tests.console.conftest import Console


def block_other_hosts(page: Page, console: Console) -> list[str]:
    """Abort every request that leaves the server; returns the list of those tried."""
    ours = urlsplit(console.url).netloc
    tried: list[str] = []

    def handle(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).netloc == ours or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            tried.append(url)
            route.abort()

    page.route("**/*", handle)
    return tried


def test_swagger_ui_renders_the_operations_offline(page: Page, console: Console) -> None:
    tried = block_other_hosts(page, console)
    page.goto(f"{console.url}/docs")
    operations = page.locator(".opblock")
    expect(operations.first).to_be_visible()
    assert operations.count() >= 20
    expect(
        page.locator(
            ".opblock-summary-path", has_text="/v1/kgent/sessions/{session_id}/messages"
        ).first
    ).to_be_visible()
    expect(page.locator(".info .title")).to_contain_text("kgents")
    expect(page.get_by_text("Unable to render this definition")).to_have_count(0)
    favicon = page.locator("link[rel~=icon]").first.get_attribute("href")
    assert favicon is not None and favicon.startswith("/")
    assert tried == []
