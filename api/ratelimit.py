"""Fixed-window rate limits per API client: Redis when configured, in-process otherwise."""

from __future__ import annotations

import time
from typing import Any


class RateLimiter:
    def __init__(self, redis: Any | None = None, window_seconds: int = 60) -> None:
        self.redis = redis
        self.window = window_seconds
        self._local: dict[tuple[str, int], int] = {}

    async def hit(self, key: str, limit: int) -> int | None:
        """Count one request; returns seconds to wait when over the limit, else None."""
        now = time.time()
        window = int(now // self.window)
        retry_after = max(1, int((window + 1) * self.window - now))
        if self.redis is not None:
            rkey = f"we:rl:{key}:{window}"
            count = await self.redis.incr(rkey)
            if count == 1:
                await self.redis.expire(rkey, self.window + 1)
        else:
            if len(self._local) > 10_000:
                self._local = {k: v for k, v in self._local.items() if k[1] >= window}
            count = self._local.get((key, window), 0) + 1
            self._local[(key, window)] = count
        return retry_after if count > limit else None
