"""Idempotent bootstrap: migrations, dev keystore, dev API key and admin user."""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config

from api.security import generate_api_key, hash_api_key, hash_password
from models import api_keys, repo
from models.db import Database
from models.tables import ApiClient, User
from settings import ROOT


def migrate(url: str) -> None:
    """alembic upgrade head (runs its own event loop: call it outside one, or in a thread)."""
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes["url"] = url
    command.upgrade(cfg, "head")


async def ensure_api_client(
    db: Database,
    key: str,
    *,
    name: str,
    client_id: str | None = None,
    rate_limit_per_minute: int | None = None,
    scopes: str | None = None,
) -> str:
    """The key with this secret, created if missing, with `scopes` (default: every scope, as the dev key
    has); an existing key's scopes are set to them (a dev key from an older version gains new scopes)."""
    key_hash = hash_api_key(key)
    wanted = scopes if scopes is not None else api_keys.ALL_SCOPES
    async with db.transaction() as s:
        existing = await api_keys.find_by_hash(s, key_hash)
        if existing is not None:
            if existing.scopes != wanted:
                await api_keys.set_scopes(s, existing.id, wanted)
            return existing.id
        client = ApiClient(
            id=client_id or str(uuid.uuid4()),
            name=name,
            key_hash=key_hash,
            key_prefix=key[:10],
            rate_limit_per_minute=rate_limit_per_minute,
            scopes=wanted,
            created_by="bootstrap",
        )
        await api_keys.create(s, client)
        return client.id


async def ensure_user(db: Database, username: str, password: str, role: str) -> None:
    async with db.transaction() as s:
        if await repo.get_user(s, username) is None:
            await repo.create_user(
                s,
                User(
                    id=str(uuid.uuid4()), username=username, password_hash=hash_password(password), role=role
                ),
            )


def dev_secrets(path: Path) -> dict[str, Any]:
    """The dev API key and admin password: made once, reused by every later `make run`."""
    if path.exists():
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    data = {
        "api_key": generate_api_key(),
        "admin_username": "admin",
        "admin_password": secrets.token_urlsafe(18),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    path.chmod(0o600)
    return data


async def bootstrap(db_url: str, secrets_path: Path) -> dict[str, Any]:
    await asyncio.to_thread(migrate, db_url)
    data = dev_secrets(secrets_path)
    db = Database(db_url)
    try:
        await ensure_api_client(db, data["api_key"], name="dev")
        await ensure_user(db, data["admin_username"], data["admin_password"], "ADMIN")
    finally:
        await db.dispose()
    return data
