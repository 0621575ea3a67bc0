"""Keeps the detached generation tasks of this process: start, cancel, drain on shutdown."""

import asyncio
import logging

from kgents.records import Message
from kgents.sessions.generation import AckListener, PlannedTurn, TurnOutcome, TurnRunner

logger = logging.getLogger(__name__)


class TurnSupervisor:
    """Owns every running generation task, so none outlives the process unnoticed."""

    def __init__(self, runner: TurnRunner) -> None:
        self._runner = runner
        self._by_session: dict[str, asyncio.Task[TurnOutcome]] = {}

    async def launch(
        self, planned: PlannedTurn, user_message: Message, listener: AckListener | None = None
    ) -> "tuple[int, asyncio.Task[TurnOutcome]]":
        """Publish the turn's first event and generate detached, at once (the provider is
        asked while the event awaits its ack); return (first seq, task) once it is
        acknowledged. If it cannot be published, the turn is closed as ``failed`` (nothing
        billed), then the error is raised. ``listener`` is told of each event of the turn
        once JetStream acknowledged it."""
        opened = asyncio.create_task(
            self._runner.open(planned, user_message, listener), name=f"open:{planned.turn.id}"
        )
        task = asyncio.create_task(
            self._runner.run(planned, listener, opened=opened), name=f"turn:{planned.turn.id}"
        )
        session_id = planned.turn.session_id
        self._by_session[session_id] = task
        task.add_done_callback(lambda done: self._forget(session_id, done))
        try:
            # Shielded: a caller that goes away leaves the turn running, as a client that
            # disconnects does.
            first_seq = await asyncio.shield(opened)
        except Exception:
            await asyncio.wait([task])  # the task closes the turn
            raise
        return first_seq, task

    def _forget(self, session_id: str, task: "asyncio.Task[TurnOutcome]") -> None:
        if self._by_session.get(session_id) is task:
            del self._by_session[session_id]
        if not task.cancelled() and task.exception() is not None:
            logger.error("generation task failed", exc_info=task.exception())

    def cancel(self, session_id: str) -> bool:
        """Cancel the turn running here for ``session_id``; False if none runs in this process."""
        task = self._by_session.get(session_id)
        if task is None or task.done():
            return False
        task.cancel()
        return True

    def running_turn_ids(self) -> list[str]:
        return [
            task.get_name().removeprefix("turn:")
            for task in self._by_session.values()
            if not task.done()
        ]

    @property
    def active(self) -> int:
        return len(self._by_session)

    async def shutdown(self, *, grace_seconds: float) -> None:
        """Let running turns finish for ``grace_seconds``, cancel (and so store) the rest, then
        stop the runner's background work."""
        tasks = list(self._by_session.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._runner.aclose()
