"""FastAPI application. `uvicorn api.app:create_app --factory --no-server-header` runs it with settings
from the environment (devstack.processes.api_command)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib.util
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.routing import Match

from api.body_guard import BodyGuard
from api.deps import AppState, TemporalConnector, pre_auth_policy
from api.errors import error_body, install_error_handlers
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
from api.schemas import openapi_document
from api.security_headers import SecurityHeaders
from api.usage import UsageMiddleware, UsageRecorder
from gc_setup import freeze_startup_heap
from logging_setup import configure_logging
from models.db import Database
from models.errors import ErrorCode
from settings import Settings


def create_app(state: AppState | None = None) -> FastAPI:
    """Build the app. Tests pass a ready `AppState`; otherwise the lifespan builds it once, from the
    settings read here."""
    settings = state.settings if state is not None else Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = state is None
        if owned:
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
        if owned:
            freeze_startup_heap()
        yield
        flusher.cancel()  # its last flush writes what is left
        await asyncio.gather(flusher, return_exceptions=True)
        if owned:
            await app.state.engine.db.dispose()

    app = FastAPI(
        title="Withdrawal engine",
        version="0.1.0",
        description="Withdrawals of native coins and ERC-20 tokens; each one a durable Temporal workflow.",
        docs_url=None,  # served by api.docs from this origin: /api-docs works without internet
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
        lifespan=lifespan,
    )
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    if state is not None:
        app.state.engine = state
    install_error_handlers(app)
    _install_method_not_allowed(app)
    usage = app.state.usage = UsageRecorder()
    app.add_middleware(BodyGuard)
    app.add_middleware(UsageMiddleware, recorder=usage)
    app.add_middleware(PreAuthLimit, policy=pre_auth_policy)  # before body checks and auth
    if settings.cors_origins:  # CORS is off unless origins are configured, then exactly those
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-API-Key"],
            expose_headers=["Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"],
            max_age=600,
        )
    app.add_middleware(SecurityHeaders, hsts=settings.env == "prod")  # outermost: on every answer
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
    _install_docs(app)
    return app


def _install_method_not_allowed(app: FastAPI) -> None:
    """405 with an `Allow` of every method the path has. Starlette's router names only the methods of
    the first route whose path matches, and GET and POST of one path are two routes here."""

    @app.exception_handler(405)
    async def _method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
        methods = {
            method
            for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
            for route in app.router.routes
            if route.matches({**request.scope, "method": method})[0] is Match.FULL
        }
        return JSONResponse(
            error_body(ErrorCode.METHOD_NOT_ALLOWED, "Method Not Allowed"),
            405,
            headers={"Allow": ", ".join(sorted(methods))},
        )


# --- /api-docs: Swagger UI from this origin ----------------------------------------------------------

DOCS_PATH = "/api-docs"
DOCS_STATIC = "/api-docs/static"
# Swagger UI 5 (it reads OpenAPI 3.1) as the swagger-ui-py wheel ships it; found without importing it.
_spec = importlib.util.find_spec("swagger_ui")
SWAGGER_UI_DIR = Path(next(iter(_spec.submodule_search_locations or []))) / "static" if _spec else None


def _docs_page(title: str, openapi_url: str) -> tuple[bytes, str]:
    """The page and its Content-Security-Policy: scripts from this origin plus the page's one inline
    script (by hash), styles from this origin (Swagger UI also sets inline styles), fetches to this
    origin only (the document and "Try it out"), no framing."""
    page = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=title,
        swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_STATIC}/favicon-32x32.png",
        oauth2_redirect_url=None,
    ).body
    body = bytes(page)
    inline = re.findall(rb"<script>(.*?)</script>", body, flags=re.S)
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'" for s in inline)
    policy = "; ".join(
        (
            "default-src 'none'",
            f"script-src 'self' {hashes}",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "font-src 'self'",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )
    return body, policy


def _install_docs(app: FastAPI) -> None:
    if SWAGGER_UI_DIR is None or not SWAGGER_UI_DIR.is_dir():
        return
    body, policy = _docs_page(f"{app.title} - API docs", app.openapi_url or "/openapi.json")
    headers = {"Content-Security-Policy": policy, "Cache-Control": "no-cache"}

    @app.get(DOCS_PATH, include_in_schema=False)
    async def api_docs() -> HTMLResponse:
        return HTMLResponse(body, headers=headers)

    app.mount(DOCS_STATIC, _Assets(directory=SWAGGER_UI_DIR), name="api-docs-static")


class _Assets(StaticFiles):
    """Swagger UI's files: cached by browsers, revalidated (ETag) on each use."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response
