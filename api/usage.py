"""API-key usage without a database write per request.

`UsageMiddleware` counts every answered request of an authenticated key (status included: 403 and
429 count too) in memory, by (key, UTC day, route template, status), and remembers each key's last
use. `UsageRecorder.flush` writes what accumulated in one transaction of upserts; the API lifespan
runs it every `interval` seconds and once more at shutdown. A failed flush keeps the counts for the
next one. The route is the template (`GET /withdrawal/status/{withdrawal_id}`), never the raw path,
so the table grows with days and routes, not with requests.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models import api_keys
from models.db import Database
from models.tables import utcnow

log = structlog.get_logger()

# Set by `api.deps.authenticate_client` once a key is known.
CLIENT_ID = "api_client_id"

_Key = tuple[str, str, str, int]  # client id, day, route, status


class UsageRecorder:
    def __init__(self, *, max_pending: int = 100_000) -> None:
        self.max_pending = max_pending
        self._counts: dict[_Key, int] = {}
        self._last_used: dict[str, datetime] = {}
        self._dropped = 0

    def record(self, client_id: str, route: str, status: int, at: datetime | None = None) -> None:
        at = at or utcnow()
        key = (client_id, at.date().isoformat(), route[:120], status)
        if key not in self._counts and len(self._counts) >= self.max_pending:
            self._dropped += 1  # the database has been unreachable for long: bound the memory
            return
        self._counts[key] = self._counts.get(key, 0) + 1
        last = self._last_used.get(client_id)
        if last is None or at > last:
            self._last_used[client_id] = at

    @property
    def pending(self) -> int:
        return sum(self._counts.values())

    async def flush(self, db: Database) -> int:
        """Write what accumulated; the number of requests written (0 on failure: they are kept)."""
        counts, last_used = self._counts, self._last_used
        if not counts and not last_used:
            return 0
        self._counts, self._last_used = {}, {}  # swapped before any await: concurrent records go on
        rows = [api_keys.UsageRow(c, d, r, st, n) for (c, d, r, st), n in counts.items()]
        try:
            async with db.transaction() as s:
                await api_keys.add_usage(s, rows)
                await api_keys.touch_last_used(s, last_used)
        except Exception as e:  # the database is down or busy: keep the counts for the next flush
            for key, n in counts.items():
                self._counts[key] = self._counts.get(key, 0) + n
            for cid, at in last_used.items():
                if cid not in self._last_used or at > self._last_used[cid]:
                    self._last_used[cid] = at
            log.warning("api_key.usage.flush_failed", pending=self.pending, error_type=type(e).__name__)
            return 0
        if self._dropped:
            log.warning("api_key.usage.dropped", requests=self._dropped)
            self._dropped = 0
        return sum(counts.values())

    async def run(self, db: Database, interval: float = 5.0) -> None:
        """Flush every `interval` s until cancelled, then once more."""
        try:
            while True:
                await asyncio.sleep(interval)
                await self.flush(db)
        finally:
            await self.flush(db)


class UsageMiddleware:
    def __init__(self, app: ASGIApp, recorder: UsageRecorder) -> None:
        self.app = app
        self.recorder = recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                client_id = scope.get("state", {}).get(CLIENT_ID)
                if client_id is not None:
                    route = getattr(scope.get("route"), "path", None) or "-"
                    self.recorder.record(client_id, f"{scope['method']} {route}", message["status"])
            await send(message)

        await self.app(scope, receive, send_counted)
