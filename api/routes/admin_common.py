"""What the admin routes share: opaque cursors, ISO 8601 query values, timestamps, the operator's
audit fields."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

from api.deps import Operator
from api.errors import ValidationFailed
from models.stats import Position

LIMIT_MAX = 500
LIMIT_DEFAULT = 50


def iso(ts: datetime | None) -> str | None:
    return None if ts is None else ts.isoformat(timespec="milliseconds") + "Z"


def parse_time(value: str | None, field: str) -> datetime | None:
    """An ISO 8601 date or date-time as naive UTC (the database's form); a value without an offset
    is UTC. 422 VALIDATION_ERROR naming `field` otherwise."""
    if value is None:
        return None
    try:
        ts = datetime.fromisoformat(value.strip())
        if ts.tzinfo is not None:  # e.g. 9999-12-31T23:59:59-01:00 overflows: bad input, not a 5xx
            ts = ts.astimezone(UTC).replace(tzinfo=None)
    except (ValueError, OverflowError) as e:
        raise ValidationFailed(f"{field} must be an ISO 8601 date or date-time", field=field) from e
    return ts


def encode_position(p: Position) -> str:
    raw = json.dumps([p.created_at.isoformat(), p.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_position(cursor: str | None) -> Position | None:
    if cursor is None:
        return None
    invalid = ValidationFailed("cursor must be a next_cursor from an earlier page", field="cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, wid = json.loads(raw)
        return Position(datetime.fromisoformat(created_at), str(wid))
    except (binascii.Error, ValueError, TypeError) as e:
        raise invalid from e


def decode_id_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 18:
        raise ValidationFailed("cursor must be a next_cursor from an earlier page", field="cursor")
    return int(cursor)


def audit_fields(op: Operator) -> dict[str, Any]:
    return {"actor": op.username, "role": op.role, "source_ip": op.source_ip}
