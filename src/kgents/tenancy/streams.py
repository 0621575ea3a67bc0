"""Caps on the streams one API key and one tenant hold open at once (``too_many_streams``).

Every long-lived response (an SSE follower, a streamed reply, and any other transport that
holds a connection for a tenant) takes a ``StreamSlot`` before it opens and gives it back when
it ends, however it ends. The caps are the plan's ``streams_per_key`` and
``streams_per_tenant``. Slots are counted in this process: behind a load balancer with N
processes, a key holds at most N times its cap.
"""

from collections import Counter

from kgents.errors import TooManyStreams
from kgents.tenancy.service import Principal


class StreamSlot:
    """One open stream of a key; ``release`` (idempotent) gives it back."""

    __slots__ = ("_key_id", "_limiter", "_released", "_tenant_id")

    def __init__(self, limiter: "StreamLimiter", *, key_id: str, tenant_id: str) -> None:
        self._limiter = limiter
        self._key_id = key_id
        self._tenant_id = tenant_id
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._limiter._give_back(key_id=self._key_id, tenant_id=self._tenant_id)

    def __enter__(self) -> "StreamSlot":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class StreamLimiter:
    """Counts the open streams of each key and tenant in this process."""

    def __init__(self) -> None:
        self._by_key: Counter[str] = Counter()
        self._by_tenant: Counter[str] = Counter()

    def acquire(self, principal: Principal) -> StreamSlot:
        """A slot for one more stream of ``principal``'s key; ``TooManyStreams`` when the key
        or its tenant already holds as many as the plan allows."""
        plan, key_id, tenant_id = principal.plan, principal.key.id, principal.tenant.id
        if self._by_key[key_id] >= plan.streams_per_key:
            raise TooManyStreams(
                f"this API key has {plan.streams_per_key} streams open, the most its plan "
                f"{principal.tenant.plan!r} allows per key; close one first"
            )
        if self._by_tenant[tenant_id] >= plan.streams_per_tenant:
            raise TooManyStreams(
                f"this tenant has {plan.streams_per_tenant} streams open, the most its plan "
                f"{principal.tenant.plan!r} allows; close one first"
            )
        self._by_key[key_id] += 1
        self._by_tenant[tenant_id] += 1
        return StreamSlot(self, key_id=key_id, tenant_id=tenant_id)

    def open_streams(self, *, key_id: str | None = None, tenant_id: str | None = None) -> int:
        """How many streams a key (or a tenant) holds open in this process."""
        if key_id is not None:
            return self._by_key[key_id]
        return self._by_tenant[tenant_id] if tenant_id is not None else self._by_tenant.total()

    def _give_back(self, *, key_id: str, tenant_id: str) -> None:
        for counts, name in ((self._by_key, key_id), (self._by_tenant, tenant_id)):
            counts[name] -= 1
            if counts[name] <= 0:
                del counts[name]
