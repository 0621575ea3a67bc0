"""Tenants and their API keys: creation, listing, revocation and authentication of requests."""

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from kgents.clock import utc_now
from kgents.config import PlanConfig
from kgents.errors import Forbidden, InvalidInput, NotFound, ScopeMissing, Unauthenticated
from kgents.ids import is_valid_id, new_id
from kgents.records import ApiKey, Tenant, TenantStatus
from kgents.tenancy.access import AccessWatch, lapse_of
from kgents.tenancy.key_cache import KeyCache
from kgents.tenancy.keys import (
    display_prefix,
    generate_api_key,
    hash_api_key,
    looks_like_api_key,
)
from kgents.tenancy.ports import TenancyStore

# ``last_used_at`` is refreshed at most this often, so authentication is not a write per request.
LAST_USED_RESOLUTION = timedelta(seconds=60)
SCOPES = {
    "sessions": "sessions, their messages, turns, events and cancel; the plan's budgets",
    "usage": "the tenant's usage (GET /v1/usage) and its meters (/api/v1/meters)",
}
"""What a key may be allowed to do; a new key gets them all unless it names some."""
DEFAULT_SCOPES = tuple(SCOPES)


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A newly created key: ``secret`` is the full key, shown to its owner this once."""

    key: ApiKey
    secret: str


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an authenticated key, its tenant and the tenant's plan."""

    tenant: Tenant
    key: ApiKey
    plan: PlanConfig
    key_hash: str = field(repr=False)

    def require_scope(self, scope: str) -> None:
        """``ScopeMissing`` (403) unless the key carries ``scope``."""
        if scope not in self.key.scopes:
            raise ScopeMissing(f"this API key lacks the {scope!r} scope")


class TenancyService:
    def __init__(
        self,
        *,
        store: TenancyStore,
        plans: dict[str, PlanConfig],
        key_cache: KeyCache | None = None,
    ) -> None:
        """``key_cache``: where ``authenticate`` remembers lookups (default: none, every
        request reads the store). Changes to keys and tenants made here clear it."""
        self._store = store
        self.plans = plans
        self._keys = key_cache if key_cache is not None else KeyCache(ttl_seconds=0)

    def plan(self, name: str) -> PlanConfig:
        try:
            return self.plans[name]
        except KeyError:
            raise InvalidInput(
                f"unknown plan {name!r}; plans: {', '.join(sorted(self.plans))}"
            ) from None

    async def create_tenant(self, *, name: str, plan: str) -> Tenant:
        self.plan(plan)
        tenant = Tenant(
            id=new_id("ten"), name=name, plan=plan, status="active", created_at=utc_now()
        )
        await self._store.add_tenant(tenant)
        return tenant

    async def list_tenants(self, *, limit: int, offset: int) -> tuple[list[Tenant], int]:
        return await self._store.list_tenants(limit=limit, offset=offset)

    async def get_tenant(self, *, tenant_id: str) -> Tenant:
        tenant = await self._store.get_tenant(tenant_id) if is_valid_id(tenant_id) else None
        if tenant is None:
            raise NotFound("tenant not found")
        return tenant

    async def update_tenant(
        self, *, tenant_id: str, plan: str | None = None, status: TenantStatus | None = None
    ) -> Tenant:
        if plan is not None:
            self.plan(plan)
        await self.get_tenant(tenant_id=tenant_id)
        tenant = await self._store.update_tenant(tenant_id, plan=plan, status=status)
        self._keys.clear()  # a suspension or a new plan applies to this process's next request
        if tenant is None:
            raise NotFound("tenant not found")
        return tenant

    async def create_api_key(
        self,
        *,
        tenant_id: str,
        name: str,
        scopes: tuple[str, ...] = DEFAULT_SCOPES,
        expires_at: datetime | None = None,
    ) -> IssuedKey:
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown or not scopes:
            raise InvalidInput(
                f"unknown scopes {unknown}; scopes: {', '.join(SCOPES)}"
                if unknown
                else f"a key needs at least one scope: {', '.join(SCOPES)}",
                code="validation_error",
            )
        await self.get_tenant(tenant_id=tenant_id)
        now = utc_now()
        if expires_at is not None and expires_at <= now:
            raise InvalidInput("expires_at must be in the future")
        secret = generate_api_key()
        key = ApiKey(
            id=new_id("key"),
            tenant_id=tenant_id,
            name=name,
            prefix=display_prefix(secret),
            scopes=tuple(dict.fromkeys(scopes)),
            created_at=now,
            last_used_at=None,
            expires_at=expires_at,
            revoked_at=None,
        )
        await self._store.add_api_key(key, key_hash=hash_api_key(secret))
        return IssuedKey(key=key, secret=secret)

    async def list_api_keys(self, *, tenant_id: str) -> list[ApiKey]:
        await self.get_tenant(tenant_id=tenant_id)
        return list(await self._store.list_api_keys(tenant_id))

    async def revoke_api_key(self, *, key_id: str, tenant_id: str | None = None) -> ApiKey:
        """Revoke a key (idempotent). With ``tenant_id``, a key of another tenant is a 404."""
        key = await self._store.get_api_key(key_id) if is_valid_id(key_id) else None
        if key is None or (tenant_id is not None and key.tenant_id != tenant_id):
            raise NotFound("API key not found")
        revoked = await self._store.revoke_api_key(key_id, at=utc_now())
        self._keys.clear()  # refused by this process from the next request on
        if revoked is None:
            raise NotFound("API key not found")
        return revoked

    async def authenticate(self, raw_key: str) -> Principal:
        """The principal behind ``raw_key``; ``Unauthenticated`` for anything but a live key."""
        if not looks_like_api_key(raw_key):
            raise Unauthenticated("invalid API key")
        key_hash = hash_api_key(raw_key)
        found = await self._lookup(key_hash)
        if found is None:
            raise Unauthenticated("invalid API key")
        key, tenant = found
        now = utc_now()
        lapse = lapse_of(key, tenant, now=now)
        if lapse is not None and lapse.code == "tenant_suspended":
            raise Forbidden(lapse.message, code=lapse.code)
        if lapse is not None:
            raise Unauthenticated(lapse.message)
        if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
            await self._store.touch_api_key(key.id, at=now)
            key = replace(key, last_used_at=now)
            self._keys.replace_key(key_hash, key)
        return Principal(tenant=tenant, key=key, plan=self.plan(tenant.plan), key_hash=key_hash)

    def watch(self, principal: Principal) -> AccessWatch:
        """A watch that ends ``principal``'s streams once their access lapses, re-checking it
        (through the key cache) every cache lifetime."""

        async def lookup() -> tuple[ApiKey, Tenant] | None:
            return await self._lookup(principal.key_hash)

        return AccessWatch(
            key=principal.key, lookup=lookup, interval_seconds=self._keys.ttl_seconds
        )

    async def _lookup(self, key_hash: str) -> tuple[ApiKey, Tenant] | None:
        found = self._keys.get(key_hash)
        if found is None:
            found = await self._store.find_api_key(key_hash)
            if found is not None:
                self._keys.put(key_hash, *found)
        return found
