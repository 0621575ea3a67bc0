"""Tenants and API keys in SQL: implements ``kgents.tenancy.ports.TenancyStore``."""

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from kgents.records import ApiKey, Tenant, TenantStatus
from kgents.store.engine import for_writes
from kgents.store.schema import ApiKeyRow, TenantRow


def tenant_record(row: TenantRow) -> Tenant:
    status: TenantStatus = "suspended" if row.status == "suspended" else "active"
    return Tenant(id=row.id, name=row.name, plan=row.plan, status=status, created_at=row.created_at)


def api_key_record(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        id=row.id,
        tenant_id=row.tenant_id,
        name=row.name,
        prefix=row.prefix,
        scopes=tuple(row.scopes),
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


class SqlTenancyStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._reads = async_sessionmaker(engine, expire_on_commit=False)
        self._writes = async_sessionmaker(for_writes(engine), expire_on_commit=False)

    async def add_tenant(self, tenant: Tenant) -> None:
        async with self._writes.begin() as db:
            db.add(
                TenantRow(
                    id=tenant.id,
                    name=tenant.name,
                    plan=tenant.plan,
                    status=tenant.status,
                    created_at=tenant.created_at,
                )
            )

    async def list_tenants(self, *, limit: int, offset: int) -> tuple[list[Tenant], int]:
        async with self._reads() as db:
            total = await db.scalar(select(func.count()).select_from(TenantRow))
            rows = await db.scalars(
                select(TenantRow)
                .order_by(TenantRow.created_at, TenantRow.id)
                .limit(limit)
                .offset(offset)
            )
            return [tenant_record(row) for row in rows], total or 0

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        async with self._reads() as db:
            row = await db.get(TenantRow, tenant_id)
            return tenant_record(row) if row else None

    async def update_tenant(
        self, tenant_id: str, *, plan: str | None, status: TenantStatus | None
    ) -> Tenant | None:
        async with self._writes.begin() as db:
            row = await db.get(TenantRow, tenant_id, with_for_update=True)
            if row is None:
                return None
            if plan is not None:
                row.plan = plan
            if status is not None:
                row.status = status
            return tenant_record(row)

    async def add_api_key(self, key: ApiKey, *, key_hash: str) -> None:
        async with self._writes.begin() as db:
            db.add(
                ApiKeyRow(
                    id=key.id,
                    tenant_id=key.tenant_id,
                    name=key.name,
                    prefix=key.prefix,
                    key_hash=key_hash,
                    scopes=list(key.scopes),
                    created_at=key.created_at,
                    last_used_at=None,
                    expires_at=key.expires_at,
                    revoked_at=None,
                )
            )

    async def list_api_keys(self, tenant_id: str) -> Sequence[ApiKey]:
        async with self._reads() as db:
            rows = await db.scalars(
                select(ApiKeyRow)
                .where(ApiKeyRow.tenant_id == tenant_id)
                .order_by(ApiKeyRow.created_at, ApiKeyRow.id)
            )
            return [api_key_record(row) for row in rows]

    async def get_api_key(self, key_id: str) -> ApiKey | None:
        async with self._reads() as db:
            row = await db.get(ApiKeyRow, key_id)
            return api_key_record(row) if row else None

    async def revoke_api_key(self, key_id: str, *, at: datetime) -> ApiKey | None:
        async with self._writes.begin() as db:
            row = await db.get(ApiKeyRow, key_id, with_for_update=True)
            if row is None:
                return None
            if row.revoked_at is None:
                row.revoked_at = at
            return api_key_record(row)

    async def find_api_key(self, key_hash: str) -> tuple[ApiKey, Tenant] | None:
        """The key with this hash and its tenant (the lookup is by hash, never by plain key)."""
        async with self._reads() as db:
            result = await db.execute(
                select(ApiKeyRow, TenantRow)
                .join(TenantRow, TenantRow.id == ApiKeyRow.tenant_id)
                .where(ApiKeyRow.key_hash == key_hash)
            )
            found = result.first()
            if found is None:
                return None
            return api_key_record(found[0]), tenant_record(found[1])

    async def touch_api_key(self, key_id: str, *, at: datetime) -> None:
        async with self._writes.begin() as db:
            await db.execute(
                update(ApiKeyRow).where(ApiKeyRow.id == key_id).values(last_used_at=at)
            )
