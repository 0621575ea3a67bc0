"""Security headers on every response: HTML is never framed and always under a policy, and
nothing is content-sniffed."""

import pytest

from kgents.api.security_headers import CONTENT_SECURITY_POLICY, DOCS_CONTENT_SECURITY_POLICY
from tests.conftest import Api

pytestmark = pytest.mark.anyio


async def test_every_html_response_has_a_policy_and_cannot_be_framed(api: Api) -> None:
    pages = {
        "/": CONTENT_SECURITY_POLICY,
        "/console/index.html": CONTENT_SECURITY_POLICY,
        "/docs": DOCS_CONTENT_SECURITY_POLICY,
        "/docs/oauth2-redirect": DOCS_CONTENT_SECURITY_POLICY,
    }
    for path, policy in pages.items():
        response = await api.client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/html"), path
        assert response.headers["content-security-policy"] == policy, path
        assert "frame-ancestors 'none'" in policy
        assert response.headers["x-frame-options"] == "DENY", path
        assert response.headers["x-content-type-options"] == "nosniff", path


async def test_api_responses_are_never_sniffed(api: Api) -> None:
    _, key = await api.tenant_with_key()
    responses = [
        await api.client.get("/health"),
        await api.client.get("/openapi.json"),
        await api.client.get("/v1/kgent/sessions", headers={"X-API-Key": key}),
        await api.client.get("/v1/kgent/sessions"),  # 401
        await api.client.get("/api/v1/meters", headers={"X-API-Key": key}),
        await api.client.get("/api/v1/meters/nope", headers={"X-API-Key": key}),  # problem
        await api.client.get("/nope"),  # 404
        await api.client.post("/v1/tenants", content=b"x" * 2_000_000, headers=api.admin),  # 413
    ]
    for response in responses:
        assert response.headers["x-content-type-options"] == "nosniff", response.request.url
        # JSON is not a page: no page policy on it.
        assert "x-frame-options" not in response.headers, response.request.url
