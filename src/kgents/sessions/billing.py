"""What closing a turn stores beside the turn: its assistant reply and its ``llm.tokens`` event.

A turn is closed by the generation task (complete, failed, cancelled) or, when its process died,
by recovery (interrupted). Both store the same two records, built here from the turn's final
state, so the reply and the bill of a turn never depend on who closed it.
"""

from dataclasses import dataclass

from kgents.clock import utc_now
from kgents.ids import new_id
from kgents.metering import events as usage_events
from kgents.records import Message, Turn, UsageEvent


@dataclass(frozen=True, slots=True)
class TurnBill:
    """The records stored with a closed turn: its reply (if any text) and its usage events."""

    message: Message | None
    events: list[UsageEvent]


def turn_bill(final: Turn, *, text: str) -> TurnBill:
    """The reply and usage events of ``final``, a closed turn whose generated text is ``text``.

    The ``llm.tokens`` event's id derives from the turn id, so a turn is billed at most once
    whoever closes it; it carries ``final.estimated`` as it is. A turn that used no tokens (the
    provider refused the request) is not billed.
    """
    at = final.finished_at or utc_now()
    message = None
    if text:
        message = Message(
            id=new_id("msg"),
            session_id=final.session_id,
            tenant_id=final.tenant_id,
            turn_id=final.id,
            role="assistant",
            content=text,
            tokens_in=final.tokens_in,
            tokens_out=final.tokens_out,
            model=final.model,
            created_at=at,
        )
    events = []
    if final.tokens_in or final.tokens_out:
        events.append(
            usage_events.llm_tokens(
                tenant_id=final.tenant_id,
                session_id=final.session_id,
                turn_id=final.id,
                tokens_in=final.tokens_in,
                tokens_out=final.tokens_out,
                model=final.model or "unknown",
                estimated=final.estimated,
                at=at,
            )
        )
    return TurnBill(message=message, events=events)
