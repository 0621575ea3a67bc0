"""Our description of OpenMeter's endpoints as the judge of our requests and responses.

The description is ``contracts/openmeter.yaml`` in this repository, written from the facts of
OpenMeter's published spec (validated with openapi-core). Its only server is
``https://127.0.0.1``, so requests are presented to the validator as sent there, whatever host
the test client used.
"""

import functools
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import yaml
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from werkzeug.datastructures import Headers, ImmutableMultiDict

SPEC_PATH = Path(__file__).resolve().parents[2] / "contracts" / "openmeter.yaml"
SPEC_SERVER = "https://127.0.0.1"


@functools.cache
def openmeter_spec() -> OpenAPI:
    """The description, parsed once per run. The CloudEvents and problem media types are JSON,
    which openapi-core only knows as ``application/json``."""
    config = Config(
        extra_media_type_deserializers={
            "application/cloudevents+json": json.loads,
            "application/cloudevents-batch+json": json.loads,
            "application/problem+json": json.loads,
        }
    )
    document = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    return OpenAPI.from_dict(document, config=config)


class HttpxOpenAPIRequest:
    """An ``httpx.Request`` as openapi-core's ``Request`` protocol."""

    def __init__(self, request: httpx.Request) -> None:
        self.request = request
        query = parse_qsl(request.url.query.decode(), keep_blank_values=True)
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(query),
            header=Headers(list(request.headers.items())),
            cookie=ImmutableMultiDict(),
        )

    @property
    def host_url(self) -> str:
        return SPEC_SERVER

    @property
    def path(self) -> str:
        return self.request.url.path

    @property
    def method(self) -> str:
        return self.request.method.lower()

    @property
    def body(self) -> bytes | None:
        return self.request.content or None

    @property
    def content_type(self) -> str:
        return self.request.headers.get("content-type", "")


class HttpxOpenAPIResponse:
    """An ``httpx.Response`` as openapi-core's ``Response`` protocol."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response

    @property
    def data(self) -> bytes:
        return self.response.content

    @property
    def status_code(self) -> int:
        return self.response.status_code

    @property
    def content_type(self) -> str:
        return self.response.headers.get("content-type", "")

    @property
    def headers(self) -> Headers:
        return Headers(list(self.response.headers.items()))


class ContractClient:
    """Sends requests through an httpx client and validates both directions against the spec."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.spec = openmeter_spec()

    async def request(
        self, method: str, url: str, *, validate_request: bool = True, **kwargs: Any
    ) -> httpx.Response:
        request = self.client.build_request(method, url, **kwargs)
        openapi_request = HttpxOpenAPIRequest(request)
        if validate_request:
            self.spec.validate_request(openapi_request)
        response = await self.client.send(request)
        await response.aread()
        self.spec.validate_response(openapi_request, HttpxOpenAPIResponse(response))
        return response

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("POST", url, **kwargs)


def assert_problem(
    response: httpx.Response, status: int, *, code: str | None = None
) -> dict[str, Any]:
    """``response`` is RFC 7807 problem details with ``status``; returns the body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail", "instance"} <= set(body)
    assert body["instance"].startswith("urn:")
    if code is not None:
        assert body["code"] == code, body
    return body
