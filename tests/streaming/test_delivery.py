"""A delivery's metadata is read from its reply subject exactly as nats-py reads it."""

import pytest
from nats.aio.msg import Msg

from kgents.streaming.delivery import delivery_metadata


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.kgent-usage.metering.2.4711.17.1764161234567891234.3",
        "$JS.ACK._.ACCHASH.kgent-usage.metering.2.4711.17.1764161234567891234.3",
        "$JS.ACK.hub.ACCHASH.kgent-usage.metering.2.4711.17.1764161234567891234.3.tok",
    ],
)
def test_delivery_metadata_reads_what_nats_py_metadata_reads(reply: str) -> None:
    meta = Msg(_client=None, subject="kgent.usage.llm.tokens", reply=reply).metadata  # type: ignore[arg-type]
    fields = delivery_metadata(reply)
    assert fields is not None
    ours = (fields.delivered, fields.stream_seq, fields.consumer_seq, fields.pending)
    assert ours == (2, 4711, 17, 3)
    theirs = (meta.num_delivered, meta.sequence.stream, meta.sequence.consumer, meta.num_pending)
    assert theirs == ours
    assert fields.published_at == meta.timestamp


@pytest.mark.parametrize(
    "reply",
    [
        None,
        "",
        "_INBOX.abc",
        "$JS.ACK.s.c.1.2.3",
        "$JS.NAK.s.c.1.2.3.4.5.6.7",
        "$JS.ACK.s.c.1.x.3.4.5",
    ],
)
def test_delivery_metadata_of_other_replies_is_none(reply: str | None) -> None:
    assert delivery_metadata(reply) is None
