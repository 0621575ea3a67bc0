"""A JetStream delivery's metadata, read from its reply subject.

What nats-py's ``Msg.metadata`` reads (both reply formats), without building its dataclasses
and datetime for every message: on the hot paths (a session's chunks, the metering consumer's
batches) that was a third of the cost of taking a message (``bench/RESULTS.md``).
"""

from datetime import UTC, datetime
from typing import NamedTuple

_ACK_PREFIX = "$JS.ACK."
_V1_TOKENS = 9
"""``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>``"""
_V2_TOKENS = 11
"""``$JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.
<ns>.<pending>[.<token>]``"""


class DeliveryMetadata(NamedTuple):
    delivered: int
    """How many times the message has been delivered, this time included."""
    stream_seq: int
    consumer_seq: int
    timestamp_ns: int
    """When the stream stored the message (ns since the epoch)."""
    pending: int
    """Messages still waiting for the consumer after this one."""

    @property
    def published_at(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp_ns / 1e9, UTC)


def delivery_metadata(reply: str | None) -> DeliveryMetadata | None:
    """The metadata in a JetStream delivery's reply subject, or ``None`` when it is not one."""
    if not reply or not reply.startswith(_ACK_PREFIX):
        return None
    tokens = reply.split(".")
    count = len(tokens)
    if count == _V1_TOKENS:
        base = 4
    elif count >= _V2_TOKENS:
        base = 6
    else:
        return None
    try:
        return DeliveryMetadata(
            delivered=int(tokens[base]),
            stream_seq=int(tokens[base + 1]),
            consumer_seq=int(tokens[base + 2]),
            timestamp_ns=int(tokens[base + 3]),
            pending=int(tokens[base + 4]),
        )
    except ValueError:
        return None
