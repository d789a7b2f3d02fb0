"""API keys (DESIGN §6.2): ADMIN routes to create and deactivate the keys API clients use."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field, StrictStr

from api.deps import AdminDep, StateDep
from api.errors import NotFound
from api.security import generate_api_key, hash_api_key
from models import repo
from models.tables import ApiClient

router = APIRouter(tags=["api-keys"])
Scope = Literal["withdrawals:create", "withdrawals:read", "webhooks:manage"]


class ApiKeyBody(BaseModel):
    name: StrictStr = Field(min_length=1, max_length=120)
    rate_limit_per_minute: int | None = Field(default=None, ge=1)
    scopes: list[Literal["withdrawals:create", "withdrawals:read"]] = [
        "withdrawals:create",
        "withdrawals:read",
    ]


@router.post("/admin/api-keys", status_code=201)
async def create_api_key(body: ApiKeyBody, state: StateDep, _: AdminDep) -> dict[str, Any]:
    key = generate_api_key()
    client = ApiClient(
        id=str(uuid.uuid4()),
        name=body.name,
        key_hash=hash_api_key(key),
        key_prefix=key[:10],
        rate_limit_per_minute=body.rate_limit_per_minute,
        scopes=" ".join(body.scopes),
    )
    async with state.db.transaction() as s:
        await repo.create_api_client(s, client)
    return {"id": client.id, "name": client.name, "api_key": key, "scopes": body.scopes}


@router.delete("/admin/api-keys/{client_id}")
async def revoke_api_key(client_id: str, state: StateDep, _: AdminDep) -> dict[str, Any]:
    async with state.db.transaction() as s:
        if not await repo.deactivate_api_client(s, client_id):
            raise NotFound("API key not found")
    return {"id": client_id, "active": False}
