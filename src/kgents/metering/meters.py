"""Meters in OpenMeter's format, the default meters, and loading them from a YAML file.

A meter turns usage events of one ``eventType`` into a number per subject and time window::

    meters:
      - slug: llm_tokens_total
        description: Tokens in and out
        eventType: llm.tokens
        aggregation: SUM            # SUM | COUNT | UNIQUE_COUNT | AVG | MIN | MAX | LATEST
        valueProperty: $.tokens_in  # JSONPath into the event's data; not needed for COUNT
        groupBy:
          model: $.model
        windowSize: MINUTE          # accepted for OpenMeter compatibility, see ``Meter``

``load_meters`` *extends* the defaults: a file meter with a default's slug replaces that default,
other file meters are added. ``includeDefaults: false`` at the top of the file drops the defaults
so the file is the whole list. Other top-level keys are ignored, so an OpenMeter ``config.yaml``
can be used as it is.
"""

import re
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from kgents.errors import InvalidInput
from kgents.metering.jsonpath import JsonPath

SLUG_PATTERN = r"^[a-z0-9]+(?:_[a-z0-9]+)*$"
_GROUP_KEY_PATTERN = r"^[A-Za-z0-9_]+$"
# ``subject`` names the event's subject in queries (``groupBy=subject``), so no meter may use it.
RESERVED_GROUP_KEYS = frozenset({"subject"})


class MeterAggregation(StrEnum):
    SUM = "SUM"
    COUNT = "COUNT"
    UNIQUE_COUNT = "UNIQUE_COUNT"
    AVG = "AVG"
    MIN = "MIN"
    MAX = "MAX"
    LATEST = "LATEST"


class WindowSize(StrEnum):
    MINUTE = "MINUTE"
    HOUR = "HOUR"
    DAY = "DAY"
    MONTH = "MONTH"


class Meter(BaseModel):
    """One meter, field for field OpenMeter's ``MeterCreate`` (camelCase on the wire).

    ``windowSize`` is kept for OpenMeter compatibility and informs clients only: usage is always
    stored per minute, so every meter can be queried with any window size.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
    )

    slug: str = Field(min_length=1, max_length=64, pattern=SLUG_PATTERN)
    name: str | None = Field(default=None, min_length=1, max_length=256)
    description: str | None = Field(default=None, max_length=1024)
    event_type: str = Field(min_length=1, max_length=128)
    aggregation: MeterAggregation
    value_property: str | None = Field(default=None, min_length=1)
    group_by: dict[str, str] = Field(default_factory=dict)
    window_size: WindowSize = WindowSize.MINUTE

    @field_validator("value_property")
    @classmethod
    def _check_value_property(cls, value: str | None) -> str | None:
        if value is not None:
            JsonPath.parse(value)
        return value

    @field_validator("group_by")
    @classmethod
    def _check_group_by(cls, value: dict[str, str]) -> dict[str, str]:
        for key, path in value.items():
            if not _is_group_key(key):
                raise ValueError(f"group key {key!r} must consist of letters, digits and '_'")
            if key in RESERVED_GROUP_KEYS:
                raise ValueError(f"group key {key!r} is reserved")
            try:
                JsonPath.parse(path)
            except ValueError as exc:
                raise ValueError(f"group key {key!r}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _check_value_property_needed(self) -> "Meter":
        if self.aggregation is not MeterAggregation.COUNT and self.value_property is None:
            raise ValueError(f"valueProperty is required for {self.aggregation.value} meters")
        return self

    def value_path(self) -> JsonPath | None:
        """The parsed ``valueProperty``; ``None`` for COUNT, which ignores it as OpenMeter does."""
        if self.aggregation is MeterAggregation.COUNT or self.value_property is None:
            return None
        return JsonPath.parse(self.value_property)

    def group_paths(self) -> dict[str, JsonPath]:
        return {key: JsonPath.parse(path) for key, path in self.group_by.items()}

    def public(self) -> dict[str, Any]:
        """The meter as OpenMeter's API shows it (camelCase, unset fields left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _is_group_key(key: str) -> bool:
    return re.fullmatch(_GROUP_KEY_PATTERN, key) is not None


DEFAULT_METERS: tuple[Meter, ...] = (
    Meter(
        slug="api_requests",
        description="API requests, one per authenticated request.",
        event_type="api.request",
        aggregation=MeterAggregation.COUNT,
    ),
    Meter(
        slug="llm_tokens_in",
        description="Prompt tokens sent to the model, by model.",
        event_type="llm.tokens",
        aggregation=MeterAggregation.SUM,
        value_property="$.tokens_in",
        group_by={"model": "$.model"},
    ),
    Meter(
        slug="llm_tokens_out",
        description="Completion tokens received from the model, by model.",
        event_type="llm.tokens",
        aggregation=MeterAggregation.SUM,
        value_property="$.tokens_out",
        group_by={"model": "$.model"},
    ),
    Meter(
        slug="session_count",
        description="Sessions created.",
        event_type="session.create",
        aggregation=MeterAggregation.COUNT,
    ),
    # Beyond DESIGN.md's four: user messages sent, one per turn.
    Meter(
        slug="session_messages",
        description="User messages sent to sessions.",
        event_type="session.message",
        aggregation=MeterAggregation.COUNT,
    ),
)


def load_meters(path: Path | None) -> list[Meter]:
    """The meters in force: the defaults, extended or replaced by the YAML file at ``path``.

    Raises ``InvalidInput`` naming the file, the meter and the field when the file is unusable.
    """
    if path is None:
        return list(DEFAULT_METERS)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidInput(f"meters file {path}: cannot be read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise InvalidInput(f"meters file {path}: not valid YAML ({exc})") from exc
    if not isinstance(document, dict) or not isinstance(document.get("meters"), list):
        raise InvalidInput(f"meters file {path}: expected a top-level 'meters:' list")
    include_defaults = document.get("includeDefaults", True)
    if not isinstance(include_defaults, bool):
        raise InvalidInput(f"meters file {path}: 'includeDefaults' must be true or false")

    loaded: dict[str, Meter] = {}
    for index, entry in enumerate(document["meters"]):
        meter = _parse_meter(path, index, entry)
        if meter.slug in loaded:
            raise InvalidInput(f"meters file {path}: meter {meter.slug!r} is declared twice")
        loaded[meter.slug] = meter

    meters = {meter.slug: meter for meter in DEFAULT_METERS} if include_defaults else {}
    meters.update(loaded)
    return list(meters.values())


def _parse_meter(path: Path, index: int, entry: object) -> Meter:
    label = f"meter #{index + 1}"
    if isinstance(entry, dict) and isinstance(entry.get("slug"), str):
        label = f"meter {entry['slug']!r}"
    if not isinstance(entry, dict):
        raise InvalidInput(f"meters file {path}: {label} must be a mapping")
    try:
        return Meter.model_validate(entry, by_alias=True, by_name=False)
    except ValidationError as exc:
        problems = "; ".join(_describe(error) for error in exc.errors())
        raise InvalidInput(f"meters file {path}: {label}: {problems}") from exc


def _describe(error: Any) -> str:
    location = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    if not location:
        return message
    return f"field {location!r}: {message}"
