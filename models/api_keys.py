"""API keys (DESIGN §6.2): the queries and the rules of a usable key.

A key is looked up by the SHA-256 of the presented secret, as the current secret or, during a
rotation's overlap, as the previous one. Keys change only through the guarded UPDATEs here (create,
rotate, deactivate), each in the caller's transaction so the audit entry commits with it. Usage is
never written per request: `api.usage` counts in memory and calls `add_usage` / `touch_last_used` in
batches.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import and_, func, or_, update
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from models.tables import ApiClient, ApiKeyUsage, utcnow

SCOPES = ("withdrawals:create", "withdrawals:read", "webhooks:manage")
ALL_SCOPES = " ".join(SCOPES)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# --- the rules of a usable key -------------------------------------------------------------------


def usable(client: ApiClient, key_hash: str, now: datetime) -> bool:
    """The presented secret (by its hash) opens this key now: not deactivated, not expired, and either
    the current secret or the previous one while its overlap lasts."""
    if not client.active or client.revoked_at is not None:
        return False
    if client.expires_at is not None and client.expires_at <= now:
        return False
    if hmac.compare_digest(client.key_hash, key_hash):
        return True
    return (
        client.previous_key_hash is not None
        and client.previous_key_expires_at is not None
        and client.previous_key_expires_at > now
        and hmac.compare_digest(client.previous_key_hash, key_hash)
    )


def parse_allowlist(entries: Iterable[str]) -> list[str]:
    """Normalised CIDRs (a bare address is its /32 or /128); ValueError names the first bad entry.
    Host bits must be zero (`10.1.2.3/8` is refused: it is ambiguous)."""
    out: list[str] = []
    for entry in entries:
        try:
            net = ipaddress.ip_network(entry.strip(), strict=True)
        except ValueError as e:
            raise ValueError(f"not a CIDR: {entry[:60]!r}") from e
        if str(net) not in out:
            out.append(str(net))
    return out


def json_allowlist(networks: list[str] | None) -> str | None:
    """The column's form: a JSON list of normalised CIDRs, or None (any address)."""
    return json.dumps(networks) if networks else None


@lru_cache(maxsize=4096)
def _networks(stored: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(n) for n in json.loads(stored))


def allowlist(client: ApiClient) -> list[str] | None:
    return None if not client.ip_allowlist else [str(n) for n in _networks(client.ip_allowlist)]


def address_allowed(client: ApiClient, address: IPAddress | None) -> bool:
    """No allowlist: any address. With one, the address must be known and inside a listed network."""
    if not client.ip_allowlist:
        return True
    if address is None:
        return False
    return any(address.version == n.version and address in n for n in _networks(client.ip_allowlist))


# --- keys ----------------------------------------------------------------------------------------


async def find_by_hash(s: AsyncSession, key_hash: str) -> ApiClient | None:
    """The key whose current or previous secret hashes to `key_hash` (both columns are indexed)."""
    q = select(ApiClient).where(
        or_(col(ApiClient.key_hash) == key_hash, col(ApiClient.previous_key_hash) == key_hash)
    )
    client: ApiClient | None = (await s.exec(q.limit(1))).first()
    return client


async def get(s: AsyncSession, client_id: str, *, for_update: bool = False) -> ApiClient | None:
    q = select(ApiClient).where(ApiClient.id == client_id)
    if for_update:
        q = q.with_for_update()
    client: ApiClient | None = (await s.exec(q)).first()
    return client


async def create(s: AsyncSession, client: ApiClient) -> None:
    s.add(client)
    await s.flush()


@dataclass(frozen=True)
class Cursor:
    created_at: datetime
    id: str

    def encode(self) -> str:
        raw = json.dumps([self.created_at.isoformat(), self.id]).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """ValueError for anything that is not a cursor this module made."""
        try:
            at, cid = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            return cls(datetime.fromisoformat(at), str(cid))
        except (binascii.Error, UnicodeDecodeError, TypeError, ValueError) as e:
            raise ValueError("invalid cursor") from e


async def page(
    s: AsyncSession, *, limit: int, after: Cursor | None = None, active: bool | None = None
) -> tuple[list[ApiClient], Cursor | None, int]:
    """Newest first: (the keys, the cursor of the next page or None, how many match in all)."""
    where: list[Any] = []
    if active is True:
        where += [col(ApiClient.active).is_(True), col(ApiClient.revoked_at).is_(None)]
    elif active is False:
        where.append(or_(col(ApiClient.active).is_(False), col(ApiClient.revoked_at).is_not(None)))
    total = int((await s.exec(select(func.count()).select_from(ApiClient).where(*where))).one())
    q = select(ApiClient).where(*where)
    if after is not None:
        q = q.where(
            or_(
                col(ApiClient.created_at) < after.created_at,
                and_(col(ApiClient.created_at) == after.created_at, col(ApiClient.id) < after.id),
            )
        )
    q = q.order_by(col(ApiClient.created_at).desc(), col(ApiClient.id).desc()).limit(limit + 1)
    rows = list((await s.exec(q)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (Cursor(rows[-1].created_at, rows[-1].id) if more else None), total


async def rotate(
    s: AsyncSession,
    client: ApiClient,
    *,
    key_hash: str,
    key_prefix: str,
    overlap_until: datetime | None,
) -> bool:
    """Replace the secret of a live key. The old secret becomes the previous one until `overlap_until`
    (None: it stops at once); a previous secret still in its overlap is dropped (one previous at most).
    Guarded by the secret read in this transaction: False when the key was revoked or rotated meanwhile.
    (The old hash is written as a value: MySQL applies SET clauses left to right, so `previous_key_hash
    = key_hash` could read the new one.)"""
    stmt = (
        update(ApiClient)
        .where(col(ApiClient.id) == client.id)
        .where(col(ApiClient.key_hash) == client.key_hash)
        .where(col(ApiClient.revoked_at).is_(None))
        .where(col(ApiClient.active).is_(True))
        .values(
            previous_key_hash=client.key_hash if overlap_until is not None else None,
            previous_key_expires_at=overlap_until,
            key_hash=key_hash,
            key_prefix=key_prefix,
            updated_at=utcnow(),
        )
    )
    result: Any = await s.exec(stmt)
    return int(result.rowcount or 0) == 1


async def deactivate(s: AsyncSession, client_id: str, *, at: datetime) -> bool:
    """Revoke a key (and any previous secret with it); False when it was already revoked."""
    stmt = (
        update(ApiClient)
        .where(col(ApiClient.id) == client_id)
        .where(col(ApiClient.revoked_at).is_(None))
        .values(active=False, revoked_at=at, previous_key_expires_at=None, updated_at=at)
    )
    result: Any = await s.exec(stmt)
    return int(result.rowcount or 0) == 1


async def set_scopes(s: AsyncSession, client_id: str, scopes: str) -> None:
    await s.exec(
        update(ApiClient).where(col(ApiClient.id) == client_id).values(scopes=scopes, updated_at=utcnow())
    )


# --- usage ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageRow:
    client_id: str
    day: str  # YYYY-MM-DD, UTC
    route: str  # "METHOD /route/{template}"
    status: int
    count: int


async def add_usage(s: AsyncSession, rows: Sequence[UsageRow], *, chunk: int = 500) -> None:
    """Add the counts to their (client, day, route, status) rows: one upsert per chunk."""
    dialect = s.get_bind().dialect.name
    for start in range(0, len(rows), chunk):
        values = [
            {"client_id": r.client_id, "day": r.day, "route": r.route, "status": r.status, "count": r.count}
            for r in rows[start : start + chunk]
        ]
        stmt: Any
        if dialect in ("mysql", "mariadb"):
            ins = mysql_insert(ApiKeyUsage).values(values)
            stmt = ins.on_duplicate_key_update(count=col(ApiKeyUsage.count) + ins.inserted["count"])
        else:
            lite = sqlite_insert(ApiKeyUsage).values(values)
            stmt = lite.on_conflict_do_update(
                index_elements=["client_id", "day", "route", "status"],
                set_={"count": col(ApiKeyUsage.count) + lite.excluded["count"]},
            )
        await s.exec(stmt)


async def touch_last_used(s: AsyncSession, last_used: Mapping[str, datetime]) -> None:
    """Move `last_used_at` forward (never back: another API process may have flushed a later use)."""
    for client_id, at in last_used.items():
        await s.exec(
            update(ApiClient)
            .where(col(ApiClient.id) == client_id)
            .where(or_(col(ApiClient.last_used_at).is_(None), col(ApiClient.last_used_at) < at))
            .values(last_used_at=at)
        )


async def usage(s: AsyncSession, client_id: str, *, since: date) -> list[ApiKeyUsage]:
    q = (
        select(ApiKeyUsage)
        .where(ApiKeyUsage.client_id == client_id)
        .where(col(ApiKeyUsage.day) >= since.isoformat())
        .order_by(col(ApiKeyUsage.day).desc(), col(ApiKeyUsage.route), col(ApiKeyUsage.status))
    )
    return list((await s.exec(q)).all())
