"""Meters: the defaults, the OpenMeter shape, and loading a meters file."""

from pathlib import Path

import pytest

from kgents.errors import InvalidInput
from kgents.metering.meters import (
    DEFAULT_METERS,
    Meter,
    MeterAggregation,
    WindowSize,
    load_meters,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "meters.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_default_meters_are_those_of_the_design() -> None:
    meters = {meter.slug: meter for meter in DEFAULT_METERS}

    assert meters["api_requests"].event_type == "api.request"
    assert meters["api_requests"].aggregation is MeterAggregation.COUNT
    for slug, path in (("llm_tokens_in", "$.tokens_in"), ("llm_tokens_out", "$.tokens_out")):
        assert meters[slug].event_type == "llm.tokens"
        assert meters[slug].aggregation is MeterAggregation.SUM
        assert meters[slug].value_property == path
        assert meters[slug].group_by == {"model": "$.model"}
    assert meters["session_count"].event_type == "session.create"
    assert meters["session_count"].aggregation is MeterAggregation.COUNT
    assert meters["session_messages"].event_type == "session.message"
    assert all(meter.window_size is WindowSize.MINUTE for meter in DEFAULT_METERS)


def test_a_meter_shows_in_openmeter_shape() -> None:
    meter = next(meter for meter in DEFAULT_METERS if meter.slug == "llm_tokens_in")

    assert meter.public() == {
        "slug": "llm_tokens_in",
        "description": "Prompt tokens sent to the model, by model.",
        "eventType": "llm.tokens",
        "aggregation": "SUM",
        "valueProperty": "$.tokens_in",
        "groupBy": {"model": "$.model"},
        "windowSize": "MINUTE",
    }


def test_without_a_file_the_defaults_are_in_force() -> None:
    assert load_meters(None) == list(DEFAULT_METERS)


def test_a_file_adds_meters_and_replaces_defaults_of_the_same_slug(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
meters:
  - slug: api_requests
    eventType: api.request
    aggregation: COUNT
    groupBy:
      endpoint: $.endpoint
  - slug: message_length_max
    description: Longest message
    eventType: session.message
    aggregation: MAX
    valueProperty: $['message_length']
    windowSize: HOUR
""",
    )

    meters = {meter.slug: meter for meter in load_meters(path)}

    assert set(meters) == {m.slug for m in DEFAULT_METERS} | {"message_length_max"}
    assert meters["api_requests"].group_by == {"endpoint": "$.endpoint"}
    assert meters["message_length_max"] == Meter(
        slug="message_length_max",
        description="Longest message",
        event_type="session.message",
        aggregation=MeterAggregation.MAX,
        value_property="$['message_length']",
        window_size=WindowSize.HOUR,
    )


def test_include_defaults_false_makes_the_file_the_whole_list(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
includeDefaults: false
meters:
  - slug: sessions
    eventType: session.create
    aggregation: COUNT
""",
    )

    assert [meter.slug for meter in load_meters(path)] == ["sessions"]


def test_an_openmeter_config_file_can_be_used_as_it_is(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
ingest:
  kafka:
    broker: 127.0.0.1:29092
sink:
  minCommitCount: 1
meters:
  - slug: tokens_total
    eventType: prompt
    aggregation: SUM
    valueProperty: $.tokens
""",
    )

    assert "tokens_total" in {meter.slug for meter in load_meters(path)}


def test_count_meters_ignore_a_value_property(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "meters:\n  - {slug: hits, eventType: hit, aggregation: COUNT, valueProperty: $.n}\n",
    )

    meter = next(meter for meter in load_meters(path) if meter.slug == "hits")

    assert meter.value_path() is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("meters: [", "not valid YAML"),
        ("- a\n- b\n", "top-level 'meters:' list"),
        ("other: 1\n", "top-level 'meters:' list"),
        ("meters: {slug: a}\n", "top-level 'meters:' list"),
        ("includeDefaults: maybe\nmeters: []\n", "'includeDefaults' must be true or false"),
        ("meters:\n  - just-a-string\n", "meter #1 must be a mapping"),
        (
            "meters:\n  - {eventType: a, aggregation: COUNT}\n",
            "meter #1: field 'slug': Field required",
        ),
        (
            "meters:\n  - {slug: Bad-Slug, eventType: a, aggregation: COUNT}\n",
            "meter 'Bad-Slug': field 'slug': String should match pattern",
        ),
        (
            "meters:\n  - {slug: a, aggregation: COUNT}\n",
            "meter 'a': field 'eventType': Field required",
        ),
        (
            "meters:\n  - {slug: a, eventType: e}\n",
            "meter 'a': field 'aggregation': Field required",
        ),
        (
            "meters:\n  - {slug: a, eventType: e, aggregation: MEDIAN}\n",
            "meter 'a': field 'aggregation': Input should be 'SUM'",
        ),
        (
            "meters:\n  - {slug: a, eventType: e, aggregation: SUM}\n",
            "meter 'a': valueProperty is required for SUM meters",
        ),
        (
            "meters:\n  - {slug: a, eventType: e, aggregation: AVG, valueProperty: tokens}\n",
            "meter 'a': field 'valueProperty': JSONPath 'tokens' must start with '$'",
        ),
        (
            "meters:\n  - {slug: a, eventType: e, aggregation: MAX, valueProperty: '$..n'}\n",
            "meter 'a': field 'valueProperty': JSONPath '$..n': recursive descent",
        ),
        (
            "meters:\n  - {slug: a, eventType: e, aggregation: COUNT, groupBy: {a-b: $.m}}\n",
            "meter 'a': field 'groupBy': group key 'a-b' must consist of",
        ),
        (
            "meters:\n  - {slug: a, eventType: e, aggregation: COUNT, groupBy: {subject: $.s}}\n",
            "meter 'a': field 'groupBy': group key 'subject' is reserved",
        ),
        (
            "meters:\n  - {slug: a, eventType: e, aggregation: COUNT, groupBy: {m: '$.*'}}\n",
            "meter 'a': field 'groupBy': group key 'm': JSONPath '$.*': unsupported",
        ),
        (
            "meters:\n  - {slug: a, eventType: e, aggregation: COUNT, windowSize: WEEK}\n",
            "meter 'a': field 'windowSize': Input should be 'MINUTE'",
        ),
        (
            "meters:\n  - {slug: a, eventType: e, aggregation: COUNT, valueproperty: $.x}\n",
            "meter 'a': field 'valueproperty': Extra inputs are not permitted",
        ),
        (
            "meters:\n  - {slug: a, event_type: e, aggregation: COUNT}\n",
            "meter 'a': field 'eventType': Field required",
        ),
        (
            "meters:\n  - {slug: a, eventType: e, aggregation: COUNT}\n"
            "  - {slug: a, eventType: f, aggregation: COUNT}\n",
            "meter 'a' is declared twice",
        ),
    ],
)
def test_an_unusable_file_is_refused_naming_the_meter_and_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)

    with pytest.raises(InvalidInput) as caught:
        load_meters(path)

    assert str(path) in caught.value.message
    assert expected in caught.value.message


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot be read"):
        load_meters(tmp_path / "absent.yaml")
