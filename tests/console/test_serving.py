"""How the API serves the console: the page with its security headers, its files as package
data, JSON errors left alone everywhere else, and the admin metering-health endpoint."""

import re
from typing import Any

import httpx

from kgents.console import STATIC_DIR
from tests.console.conftest import ADMIN_HEADERS, Console
from tests.support.waiting import until

EXPECTED_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


def test_page_is_served_at_root_with_a_strict_policy(console: Console) -> None:
    response = httpx.get(console.api_url + "/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["content-security-policy"] == EXPECTED_CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    page = response.text
    # No inline script or style anywhere: every script is a same-origin module file.
    assert re.findall(r"<script\b[^>]*>", page) == ['<script type="module" src="/console/app.js">']
    assert "</script>" in page and re.search(r"<script[^>]*>\s*\S+\s*</script>", page) is None
    assert " style=" not in page and "<style" not in page
    assert re.search(r"\son[a-z]+=", page) is None  # no inline event handlers


def test_console_files_are_served_and_complete(console: Console) -> None:
    page = httpx.get(console.api_url + "/").text
    referenced = set(re.findall(r'(?:src|href)="/console/([^"]+)"', page))
    for module in STATIC_DIR.glob("*.js"):
        referenced.update(re.findall(r'from "\./([^"]+)"', module.read_text()))
    assert {"app.js", "console.css", "icon.svg", "sse.js", "api.js"} <= referenced
    for name in sorted(referenced):
        assert (STATIC_DIR / name).is_file(), name
        response = httpx.get(f"{console.api_url}/console/{name}")
        assert response.status_code == 200, name
        assert response.headers["x-content-type-options"] == "nosniff"
        if name.endswith(".js"):
            assert "javascript" in response.headers["content-type"]


def test_unknown_paths_keep_the_json_error_body(console: Console) -> None:
    for path in ("/v1/nope", "/v1/kgent/nothing/here", "/console/missing.js", "/nope"):
        response = httpx.get(console.api_url + path)
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/json", path
        assert response.json()["error"]["code"] == "not_found", path
    response = httpx.post(console.api_url + "/", json={})
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    schema = httpx.get(console.api_url + "/openapi.json").json()
    assert "/" not in schema["paths"]
    assert "/v1/admin/metering" in schema["paths"]


def test_admin_metering_health(console: Console) -> None:
    response = httpx.get(console.api_url + "/v1/admin/metering")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    _, key = console.tenant_key("not-an-admin")
    response = httpx.get(
        console.api_url + "/v1/admin/metering", headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 403 and response.json()["error"]["code"] == "admin_only"

    # A tenant request is metered: the relay empties the outbox and the processor, once it
    # has fetched the last usage event, reports that none wait behind it.
    listed = httpx.get(console.api_url + "/v1/kgent/sessions", headers={"X-API-Key": key})
    assert listed.status_code == 200

    def health() -> dict[str, Any]:
        response = httpx.get(console.api_url + "/v1/admin/metering", headers=ADMIN_HEADERS)
        assert response.status_code == 200
        body: dict[str, Any] = response.json()
        return body

    until(lambda: health()["consumer_lag"] == 0 and health()["outbox_backlog"] == 0, seconds=15)
    assert health() == {"outbox_backlog": 0, "consumer_lag": 0, "dead_letters": 0}
