"""Our description of OpenMeter's endpoints (``contracts/openmeter.yaml``) has teeth: it
refuses the responses and requests OpenMeter's spec refuses."""

from typing import Any

import httpx
import pytest
from openapi_core.exceptions import OpenAPIError

from tests.openmeter.contract import HttpxOpenAPIRequest, HttpxOpenAPIResponse, openmeter_spec

QUERY = "https://127.0.0.1/api/v1/meters/llm_tokens_in/query"
ROW = {"value": 1.0, "windowStart": "2025-07-07T00:00:00Z", "windowEnd": "2025-07-08T00:00:00Z"}


def check(request: httpx.Request, status: int, body: Any, content_type: str) -> None:
    response = httpx.Response(status, json=body, headers={"content-type": content_type})
    openmeter_spec().validate_response(HttpxOpenAPIRequest(request), HttpxOpenAPIResponse(response))


def test_a_valid_query_result_passes() -> None:
    row = {**ROW, "subject": None, "groupBy": {}}
    check(httpx.Request("GET", QUERY), 200, {"data": [row]}, "application/json")


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (200, {"rows": []}, "application/json"),  # no data
        (200, {"data": [ROW]}, "application/json"),  # a row without subject and groupBy
        (200, {"data": [], "windowSize": "WEEK"}, "application/json"),
        (
            400,
            {"type": "about:blank", "detail": "x", "instance": "urn:x"},
            "application/problem+json",
        ),
        (400, {"error": {"code": "x", "message": "y"}}, "application/json"),
    ],
)
def test_wrong_responses_are_refused(status: int, body: Any, content_type: str) -> None:
    with pytest.raises(OpenAPIError):
        check(httpx.Request("GET", QUERY), status, body, content_type)


def test_wrong_requests_are_refused() -> None:
    spec = openmeter_spec()
    for request in (
        httpx.Request("GET", QUERY, params={"windowSize": "WEEK"}),
        httpx.Request("GET", "https://127.0.0.1/api/v1/meters/Not-A-Slug"),
        httpx.Request(
            "POST",
            "https://127.0.0.1/api/v1/events",
            json={"specversion": "1.0", "id": "1", "source": "s", "type": "t"},  # no subject
            headers={"content-type": "application/cloudevents+json"},
        ),
    ):
        with pytest.raises(OpenAPIError):
            spec.validate_request(HttpxOpenAPIRequest(request))
