"""FastAPI application. `uvicorn api.app:create_app --factory` runs it with settings from the environment."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.body_guard import BodyGuard
from api.deps import AppState, TemporalConnector, pre_auth_policy
from api.errors import install_error_handlers
from api.ratelimit import PreAuthLimit, RateLimiter
from api.routes import (
    admin,
    admin_alerts,
    admin_stats,
    admin_system,
    api_keys,
    auth,
    dashboard,
    health,
    webhooks,
    withdrawals,
)
from api.usage import UsageMiddleware, UsageRecorder
from logging_setup import configure_logging
from models.db import Database
from settings import Settings


def create_app(state: AppState | None = None) -> FastAPI:
    """Build the app. Tests pass a ready `AppState`; otherwise the lifespan builds it once."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = state is None
        if owned:
            settings = Settings()
            configure_logging(settings.log_level)
            redis = None
            if settings.redis_url:
                from redis.asyncio import Redis

                redis = Redis.from_url(settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
            app.state.engine = AppState(
                settings=settings,
                config=settings.engine_config,
                db=Database(settings.db_url),
                temporal=TemporalConnector(settings),
                limiter=RateLimiter(redis),
            )
        else:
            app.state.engine = state
        flusher = asyncio.create_task(usage.run(app.state.engine.db))
        yield
        flusher.cancel()  # its last flush writes what is left
        await asyncio.gather(flusher, return_exceptions=True)
        if owned:
            await app.state.engine.db.dispose()

    app = FastAPI(
        title="Withdrawal engine",
        version="0.1.0",
        description="Withdrawals of native coins and ERC-20 tokens; each one a durable Temporal workflow.",
        docs_url="/api-docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    if state is not None:
        app.state.engine = state
    install_error_handlers(app)
    usage = app.state.usage = UsageRecorder()
    app.add_middleware(BodyGuard)
    app.add_middleware(UsageMiddleware, recorder=usage)
    app.add_middleware(PreAuthLimit, policy=pre_auth_policy)  # outermost: before body checks and auth
    app.include_router(withdrawals.router)
    app.include_router(health.router)
    app.include_router(admin.router)
    app.include_router(admin_stats.router)
    app.include_router(admin_system.router)
    app.include_router(auth.router)
    app.include_router(api_keys.router)
    app.include_router(dashboard.router)
    app.include_router(admin_alerts.router)
    app.include_router(webhooks.router)
    return app
