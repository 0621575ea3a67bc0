"""``GET /v1/admin/metering``: how far metering is behind, for operators (admin token).

- ``outbox_backlog``: usage events stored with their change but not yet published to JetStream.
- ``consumer_lag``: usage events waiting in JetStream for the metering processor, as the
  processor of this server (``app.state.metering_processor``) saw after its last batch; ``null``
  while there is none, or it has not fetched a batch yet.
- ``dead_letters``: events the processor gave up on and parked; ``null`` while the platform has
  no meter store (``platform.meters``).
"""

from typing import Protocol, runtime_checkable

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from kgents.api.deps import AdminDep, PlatformDep
from kgents.api.schemas import ErrorBody
from kgents.metering.processor import MeteringProcessor

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[AdminDep])


@runtime_checkable
class DeadLetterSource(Protocol):
    async def dead_letter_count(self) -> int: ...


class MeteringHealthPublic(BaseModel):
    outbox_backlog: int = Field(description="Usage events not yet published to JetStream.")
    consumer_lag: int | None = Field(
        description="Usage events waiting for the metering processor; null: not known."
    )
    dead_letters: int | None = Field(
        description="Events parked by the processor; null: no meter store."
    )


@router.get(
    "/metering",
    responses={401: {"model": ErrorBody, "description": "Admin token missing or wrong"}},
)
async def metering_health(request: Request, platform: PlatformDep) -> MeteringHealthPublic:
    processor = getattr(request.app.state, "metering_processor", None)
    meters = getattr(platform, "meters", None)
    return MeteringHealthPublic(
        outbox_backlog=await platform.outbox.backlog(),
        consumer_lag=(
            processor.stats.last_pending if isinstance(processor, MeteringProcessor) else None
        ),
        dead_letters=(
            await meters.dead_letter_count() if isinstance(meters, DeadLetterSource) else None
        ),
    )
