"""``GET /metrics``: every Prometheus series of this process (admin token).

Scrape it with the admin token as a bearer credential, e.g. in ``prometheus.yml``::

    scrape_configs:
      - job_name: kgents
        authorization: {credentials_file: /path/to/.kgents/admin-token}
        static_configs: [{targets: ["127.0.0.1:8000"]}]

The series are listed in ``kgents.observability.metrics``.
"""

from typing import Any

from fastapi import APIRouter, Request, Response

from kgents.api.deps import AdminDep
from kgents.api.schemas import ErrorBody
from kgents.observability.metrics import Metrics

router = APIRouter(tags=["operations"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text exposition format 0.0.4",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
    401: {"model": ErrorBody, "description": "Admin token missing or wrong"},
}


@router.get(
    "/metrics",
    dependencies=[AdminDep],
    response_class=Response,
    responses=_RESPONSES,
    summary="Prometheus metrics",
)
async def metrics(request: Request) -> Response:
    """HTTP requests, open streams, time to first chunk, chunks published, JetStream publish
    latency, outbox backlog, metering lag and dead letters, OpenMeter forward errors and the
    NATS connection state, in Prometheus' text format."""
    registry: Metrics = request.app.state.metrics
    return Response(await registry.exposition(), media_type=Metrics.content_type)
