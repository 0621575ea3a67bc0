"""Admin API: tenants and their API keys (admin token)."""

from typing import Any

from fastapi import APIRouter, Query, status

from kgents.api.deps import AdminDep, PlatformDep
from kgents.api.schemas import (
    MAX_OFFSET,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyPublic,
    ApiKeysPublic,
    ErrorBody,
    TenantCreate,
    TenantPublic,
    TenantsPublic,
    TenantUpdate,
)
from kgents.tenancy.service import DEFAULT_SCOPES

router = APIRouter(prefix="/v1/tenants", tags=["admin"], dependencies=[AdminDep])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Admin token missing or wrong"},
    422: {"model": ErrorBody, "description": "Invalid request"},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such tenant (or key)"},
}
_BODY: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorBody, "description": "Request body too large"},
}


@router.post("", status_code=status.HTTP_201_CREATED, responses={**_ERRORS, **_BODY})
async def create_tenant(body: TenantCreate, platform: PlatformDep) -> TenantPublic:
    tenant = await platform.tenancy.create_tenant(name=body.name, plan=body.plan)
    return TenantPublic.of(tenant)


@router.get("", responses=_ERRORS)
async def list_tenants(
    platform: PlatformDep,
    limit: int = Query(default=50, ge=1, le=500),
    offset: int = Query(default=0, ge=0, le=MAX_OFFSET),
) -> TenantsPublic:
    tenants, total = await platform.tenancy.list_tenants(limit=limit, offset=offset)
    return TenantsPublic(tenants=[TenantPublic.of(t) for t in tenants], total=total)


@router.get("/{tenant_id}", responses={**_ERRORS, **_NOT_FOUND})
async def get_tenant(tenant_id: str, platform: PlatformDep) -> TenantPublic:
    return TenantPublic.of(await platform.tenancy.get_tenant(tenant_id=tenant_id))


@router.patch("/{tenant_id}", responses={**_ERRORS, **_NOT_FOUND, **_BODY})
async def update_tenant(tenant_id: str, body: TenantUpdate, platform: PlatformDep) -> TenantPublic:
    tenant = await platform.tenancy.update_tenant(
        tenant_id=tenant_id, plan=body.plan, status=body.status
    )
    return TenantPublic.of(tenant)


@router.post(
    "/{tenant_id}/keys",
    status_code=status.HTTP_201_CREATED,
    responses={**_ERRORS, **_NOT_FOUND, **_BODY},
)
async def create_key(tenant_id: str, body: ApiKeyCreate, platform: PlatformDep) -> ApiKeyCreated:
    issued = await platform.tenancy.create_api_key(
        tenant_id=tenant_id,
        name=body.name,
        scopes=tuple(body.scopes) if body.scopes else DEFAULT_SCOPES,
        expires_at=body.expires_at,
    )
    return ApiKeyCreated(**ApiKeyPublic.of(issued.key).model_dump(), key=issued.secret)


@router.get("/{tenant_id}/keys", responses={**_ERRORS, **_NOT_FOUND})
async def list_keys(tenant_id: str, platform: PlatformDep) -> ApiKeysPublic:
    keys = await platform.tenancy.list_api_keys(tenant_id=tenant_id)
    return ApiKeysPublic(keys=[ApiKeyPublic.of(key) for key in keys])


@router.delete("/{tenant_id}/keys/{key_id}", responses={**_ERRORS, **_NOT_FOUND})
async def revoke_key(tenant_id: str, key_id: str, platform: PlatformDep) -> ApiKeyPublic:
    await platform.tenancy.get_tenant(tenant_id=tenant_id)
    key = await platform.tenancy.revoke_api_key(key_id=key_id, tenant_id=tenant_id)
    return ApiKeyPublic.of(key)
