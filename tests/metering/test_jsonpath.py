"""The JSONPath subset of meters."""

from typing import Any

import pytest

from kgents.metering.jsonpath import JsonPath, JsonPathError

DATA = {
    "tokens": 12,
    "usage": {"input": {"count": 3}, "model name": "m"},
    "it's": "quoted",
    "items": [{"n": 1}, {"n": 2}],
    "nothing": None,
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("$.tokens", 12),
        ("$.usage.input.count", 3),
        ("$['tokens']", 12),
        ('$["usage"]["model name"]', "m"),
        ("$['usage'].input['count']", 3),
        ("$['it\\'s']", "quoted"),
        ("$.items[1].n", 2),
        ("$.items[0]", {"n": 1}),
        ("$.missing", None),
        ("$.usage.missing.deeper", None),
        ("$.tokens.deeper", None),
        ("$.items[5].n", None),
        ("$.usage[0]", None),
        ("$.nothing.below", None),
    ],
)
def test_a_path_selects_one_value_or_none(path: str, expected: Any) -> None:
    assert JsonPath.parse(path).extract(DATA) == expected


def test_a_path_reads_nothing_from_data_that_is_not_an_object() -> None:
    assert JsonPath.parse("$.a").extract(None) is None
    assert JsonPath.parse("$.a").extract([1, 2]) is None


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("tokens", "must start with '$'"),
        ("$", "must select a property"),
        ("$..tokens", "recursive descent"),
        ("$.a..b", "recursive descent"),
        ("$.*", "unsupported syntax"),
        ("$[*]", "unsupported syntax"),
        ("$.items[?(@.n > 1)]", "unsupported syntax"),
        ("$.items[-1]", "unsupported syntax"),
        ("$.items[0:2]", "unsupported syntax"),
        ("$['open", "unsupported syntax"),
        ("$.a b", "unsupported syntax"),
    ],
)
def test_paths_outside_the_subset_are_refused(path: str, reason: str) -> None:
    with pytest.raises(JsonPathError) as caught:
        JsonPath.parse(path)

    assert reason in str(caught.value)
