"""The records a closed turn stores beside itself: its reply and its one ``llm.tokens`` event."""

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from kgents.metering.events import llm_tokens_event_id
from kgents.records import Turn
from kgents.sessions.billing import turn_bill

FINISHED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def closed_turn(**changes: object) -> Turn:
    turn = Turn(
        id="turn_1",
        session_id="ses_1",
        tenant_id="ten_1",
        status="complete",
        mode="reflect",
        budget="dialogue",
        user_message_id="msg_u",
        assistant_message_id=None,
        tokens_in=12,
        tokens_out=3,
        model="gpt-test",
        estimated=False,
        error_code=None,
        first_seq=1,
        started_at=FINISHED,
        finished_at=FINISHED,
    )
    return replace(turn, **changes)  # type: ignore[arg-type]


def test_a_reply_and_one_llm_tokens_event_whose_id_derives_from_the_turn() -> None:
    bill = turn_bill(closed_turn(), text="Hello there")

    assert bill.message is not None
    assert (bill.message.role, bill.message.content, bill.message.turn_id) == (
        "assistant",
        "Hello there",
        "turn_1",
    )
    assert (bill.message.tokens_in, bill.message.tokens_out) == (12, 3)
    assert bill.message.created_at == FINISHED
    [event] = bill.events
    assert event.id == llm_tokens_event_id("turn_1")
    assert (event.type, event.subject, event.time) == ("llm.tokens", "ten_1", FINISHED)
    assert event.data == {
        "tokens_in": 12,
        "tokens_out": 3,
        "model": "gpt-test",
        "session_id": "ses_1",
        "turn_id": "turn_1",
        "estimated": False,
    }


def test_billing_the_same_turn_twice_gives_the_same_event_id() -> None:
    first = turn_bill(closed_turn(), text="a")
    again = turn_bill(closed_turn(status="interrupted", estimated=True), text="a b")

    assert first.events[0].id == again.events[0].id


@pytest.mark.parametrize("estimated", [False, True])
def test_estimated_is_carried_as_the_turn_says(estimated: bool) -> None:
    [event] = turn_bill(closed_turn(estimated=estimated), text="x").events

    assert event.data["estimated"] is estimated


def test_no_text_no_reply_and_no_tokens_no_bill() -> None:
    bill = turn_bill(closed_turn(tokens_in=0, tokens_out=0, status="failed"), text="")

    assert bill.message is None
    assert bill.events == []


def test_a_turn_without_a_model_is_billed_to_unknown() -> None:
    [event] = turn_bill(closed_turn(model=None), text="").events

    assert event.data["model"] == "unknown"
