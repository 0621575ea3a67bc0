"""Turns of dead processes: leases, and closing expired turns as ``interrupted``.

Every process renews the lease of the turns it generates. Any replica (at start-up and then
periodically) closes a running turn whose lease expired: its partial text is rebuilt from the
chunks in the event stream, what was generated is billed once (``estimated``), and an ``error``
event with code ``interrupted`` ends the turn for its followers.
"""

import asyncio
import logging
from dataclasses import replace
from datetime import timedelta

from kgents.clock import utc_now
from kgents.errors import KgentsError
from kgents.llm.base import estimate_tokens
from kgents.metering.cancellation import raise_if_cancelled
from kgents.records import Turn
from kgents.sessions.billing import turn_bill
from kgents.sessions.generation import error_event
from kgents.sessions.ports import SessionEventLog, SessionStore
from kgents.sessions.supervisor import TurnSupervisor

logger = logging.getLogger(__name__)


class TurnRecovery:
    def __init__(
        self,
        *,
        store: SessionStore,
        events: SessionEventLog,
        supervisor: TurnSupervisor,
        lease: timedelta,
    ) -> None:
        self._store = store
        self._events = events
        self._supervisor = supervisor
        self._lease = lease

    async def renew_leases(self) -> None:
        await self._store.renew_leases(
            self._supervisor.running_turn_ids(), until=utc_now() + self._lease
        )

    async def interrupt_expired(self) -> int:
        """Close every running turn whose lease expired; return how many this call closed."""
        closed = 0
        for turn in await self._store.expired_turns(now=utc_now()):
            if await self._interrupt(turn):
                closed += 1
        return closed

    async def _interrupt(self, turn: Turn) -> bool:
        # Without its first sequence (its process died before storing it, or storing it
        # failed) the turn's chunks are looked for among all the session's chunks, which the
        # stream bounds per subject: a turn is never billed for nothing because of it.
        chunks = await self._events.turn_chunks(
            turn.session_id, turn.id, first_seq=turn.first_seq or 1
        )
        text = "".join(chunks)
        final = replace(
            turn,
            status="interrupted",
            tokens_in=turn.tokens_in if chunks else 0,
            tokens_out=estimate_tokens(text),
            model=turn.model or "unknown",
            estimated=True,
            error_code="interrupted",
            finished_at=utc_now(),
        )
        bill = turn_bill(final, text=text)
        stored = await self._store.finish_turn(
            final, assistant_message=bill.message, events=bill.events
        )
        if stored is None:
            return False  # another replica closed it first
        logger.info("turn %s interrupted (%d chunks recovered)", turn.id, len(chunks))
        await self._events.publish(
            error_event(
                final,
                code="interrupted",
                message="the process generating this turn stopped; partial reply saved",
            )
        )
        return True

    async def run(self, *, interval_seconds: float) -> None:
        """Renew leases and close expired turns until cancelled."""
        while True:
            raise_if_cancelled()
            try:
                await self.renew_leases()
                await self.interrupt_expired()
            except KgentsError as exc:
                logger.warning("turn recovery postponed: %s", exc)
            except Exception:
                logger.exception("turn recovery failed; retrying")
            await asyncio.sleep(interval_seconds)
