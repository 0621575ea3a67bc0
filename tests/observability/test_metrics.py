"""``GET /metrics`` after real traffic on a real server: every series the operators need."""

import asyncio
from pathlib import Path
from types import SimpleNamespace

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from kgents.api.app import create_app
from kgents.metering.processor import ProcessorStats
from kgents.observability.metrics import Metrics
from tests.conftest import make_settings
from tests.observability.conftest import ADMIN, Live
from tests.support.waiting import until

SSE_ROUTE = "/v1/kgent/sessions/{session_id}/messages"


class Scrape:
    def __init__(self, text: str) -> None:
        self.families = {family.name: family for family in text_string_to_metric_families(text)}
        self.samples: list[Sample] = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels: str) -> float | None:
        for sample in self.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
        return None


def scrape(live: Live) -> Scrape:
    response = live.client.get("/metrics", headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Scrape(response.text)


def stream_turn(live: Live, session_id: str, message: str) -> list[str]:
    """Send a message with ``stream=true``; the SSE lines of the reply."""
    with live.client.stream(
        "POST",
        f"/v1/kgent/sessions/{session_id}/messages",
        json={"message": message},
        headers=live.headers,
    ) as response:
        assert response.status_code == 200
        return list(response.iter_lines())


def test_metrics_need_the_admin_token(live: Live) -> None:
    response = live.client.get("/metrics")
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
    response = live.client.get("/metrics", headers={"Authorization": f"Bearer {live.key}"})
    assert response.status_code == 403 and response.json()["error"]["code"] == "admin_only"


def test_series_after_real_traffic(live: Live) -> None:
    session_id = live.new_session()
    lines = stream_turn(live, session_id, "count my chunks")
    chunks = sum(1 for line in lines if line == "event: chunk")
    assert chunks > 10
    assert live.client.get(f"/v1/kgent/sessions/{session_id}", headers=live.headers).is_success
    assert live.client.get("/nowhere/123").status_code == 404
    assert live.client.get("/v1/kgent/sessions/ses_nope", headers=live.headers).status_code == 404

    metrics = scrape(live)
    requests = "kgents_http_requests_total"
    assert metrics.value(requests, method="POST", route="/v1/kgent/sessions", status="201") == 1
    assert metrics.value(requests, method="POST", route=SSE_ROUTE, status="200") == 1
    session_route = "/v1/kgent/sessions/{session_id}"
    assert metrics.value(requests, method="GET", route=session_route, status="200") == 1
    assert metrics.value(requests, method="GET", route=session_route, status="404") == 1
    assert metrics.value(requests, method="GET", route="unmatched", status="404") == 1
    # Path values never become label values.
    assert not any("ses_" in s.labels.get("route", "") for s in metrics.samples)

    duration = "kgents_http_request_duration_seconds_count"
    assert metrics.value(duration, method="POST", route="/v1/kgent/sessions") == 1
    assert metrics.value(duration, route=SSE_ROUTE) is None  # streams are not latencies

    assert metrics.value("kgents_chunks_published_total") == chunks
    assert metrics.value("kgents_time_to_first_chunk_seconds_count") == 1
    first_chunk = metrics.value("kgents_time_to_first_chunk_seconds_sum")
    assert first_chunk is not None and 0 < first_chunk < 5
    assert metrics.value("kgents_turns_finished_total", outcome="complete") == 1
    publish = "kgents_jetstream_publish_seconds_count"
    assert metrics.value(publish, operation="start") == 1  # the user_message
    assert metrics.value(publish, operation="chunk") == chunks
    assert metrics.value(publish, operation="end") == 1  # complete
    assert metrics.value("kgents_sse_streams_active") == 0
    assert metrics.value("kgents_nats_connected") == 1
    assert metrics.value("kgents_turns_running") == 0
    assert metrics.value("kgents_metering_dead_letters") == 0
    # The relay empties the outbox; the metering processor, once it has fetched the last of
    # these usage events, reports that none wait behind them.
    until(lambda: scrape(live).value("kgents_outbox_backlog") == 0, seconds=15)
    lag = "kgents_metering_consumer_lag_messages"
    until(lambda: scrape(live).value(lag) == 0, seconds=15)
    metrics = scrape(live)
    assert metrics.value("kgents_metering_consumer_lag_seconds") is not None
    assert metrics.value("kgents_openmeter_forward_errors_total") == 0  # no OpenMeter here


def test_open_streams_and_cancelled_turns(live: Live) -> None:
    session_id = live.new_session()
    with httpx.Client(base_url=live.url, timeout=30) as follower:
        with follower.stream(
            "GET", f"/v1/kgent/sessions/{session_id}/events", headers=live.headers
        ) as response:
            lines = response.iter_lines()  # kept: dropping the iterator closes the connection
            assert next(lines) == ": connected"
            assert scrape(live).value("kgents_sse_streams_active") == 1
    until(lambda: scrape(live).value("kgents_sse_streams_active") == 0)

    with live.client.stream(
        "POST",
        f"/v1/kgent/sessions/{session_id}/messages",
        json={"message": "stop me"},
        headers=live.headers,
    ) as response:
        for line in response.iter_lines():
            if line == "event: chunk":
                cancel = live.client.post(
                    f"/v1/kgent/sessions/{session_id}/cancel", headers=live.headers
                )
                assert cancel.status_code == 200
                break
    until(lambda: scrape(live).value("kgents_turns_finished_total", outcome="cancelled") == 1)


def test_every_app_has_its_own_registry(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "sqlite:///unused.db", "nats://127.0.0.1:1")
    first, second = create_app(settings), create_app(settings)
    assert first.state.metrics.registry is not second.state.metrics.registry
    first.state.metrics.http_requests.labels("GET", "/x", "200").inc()
    assert second.state.metrics.http_requests.labels("GET", "/x", "200")._value.get() == 0


def test_metering_series_come_from_the_processor_stats() -> None:
    metrics = Metrics()
    before = Scrape(asyncio.run(metrics.exposition()).decode())
    assert before.value("kgents_metering_consumer_lag_messages") is None  # no processor yet
    stats = ProcessorStats(forward_errors=3, last_pending=12, last_lag_seconds=0.75)
    metrics.watch_metering(lambda: stats)
    after = Scrape(asyncio.run(metrics.exposition()).decode())
    assert after.value("kgents_metering_consumer_lag_messages") == 12
    assert after.value("kgents_metering_consumer_lag_seconds") == 0.75
    assert after.value("kgents_openmeter_forward_errors_total") == 3


def test_a_failing_source_leaves_its_series_empty() -> None:
    metrics = Metrics()

    async def broken() -> int:
        raise RuntimeError("database down")

    metrics.watch(
        outbox_backlog=broken,
        nats_connected=lambda: False,
        turns_running=lambda: 2,
        dead_letters=lambda: None,
        follows=SimpleNamespace(feeds=1, followers=3, private_readers=0),
    )
    scraped = Scrape(asyncio.run(metrics.exposition()).decode())
    assert scraped.value("kgents_outbox_backlog") is None
    assert "kgents_outbox_backlog" in scraped.families
    assert scraped.value("kgents_nats_connected") == 0
    assert scraped.value("kgents_turns_running") == 2
    assert scraped.value("kgents_followers_open") == 3
