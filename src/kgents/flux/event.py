"""``FluxEvent``: a value travelling through a stream, either data or metadata.

Data is what the stream is about (text chunks); metadata describes it (usage, progress). Operators
that transform data leave metadata alone, so a usage report survives any pipeline of maps.
"""

from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

T = TypeVar("T")
M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class FluxEvent(Generic[T, M]):
    kind: Literal["data", "metadata"]
    value: T | None = None
    meta: M | None = None

    @classmethod
    def data(cls, value: T) -> "FluxEvent[T, M]":
        return cls(kind="data", value=value)

    @classmethod
    def metadata(cls, meta: M) -> "FluxEvent[T, M]":
        return cls(kind="metadata", meta=meta)

    @property
    def is_data(self) -> bool:
        return self.kind == "data"

    @property
    def is_metadata(self) -> bool:
        return self.kind == "metadata"
